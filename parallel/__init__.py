"""Distributed machinery, model-agnostic: parallel dims, process groups, context parallelism,
data parallelism. Nothing here reads Hydra config objects directly except `dims.py`'s builder."""
