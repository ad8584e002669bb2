"""Pipeline parallelism: the model cut into chunks over the pipeline ranks (split.py), the
schedules as one lock-step timeline every rank computes alike (timeline.py), and the executor
that runs a rank's share of it and moves activations and gradients between ranks
(executor.py)."""
