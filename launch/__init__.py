"""torchrun launchers: local (one node), multi-node (c10d rendezvous) and SLURM."""
