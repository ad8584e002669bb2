"""A run's life from start to exit, apart from the training itself: the process group and
device (`process_group`), the run dir and where training starts or resumes (`run_dir`), one
run per run dir (`run_lock`),
stopping on SIGTERM / Ctrl-C (`stopping`), the hang watchdog (`watchdog`), the guard against
non-finite steps (`step_guard`), deterministic kernels for a run (`determinism`) and the
faults the chaos tests inject on purpose (`fault_injection`)."""
