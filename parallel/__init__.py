"""Distributed machinery, model-agnostic: the parallel plan (plan.py: degrees, process groups,
strategies, shard layout, all validated from the typed `parallel` config section in
config.py), context parallelism (context/), core attention disaggregation (cad/) and data
parallelism (data_parallel.py). Imports nothing from the trainer (`distca`)."""
