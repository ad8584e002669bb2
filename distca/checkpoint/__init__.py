"""Checkpoints: where a run's state is written and read back. `store` saves and loads the
engine's weights and optimizer with the trainer state (atomically: `step_X.partial`, renamed
once complete), finds the newest complete one, prunes old ones and checks that a checkpoint
matches this run's model and engine before anything is built; `manifest` lists each file's
size and checksum so a torn or truncated checkpoint is recognised and skipped."""
