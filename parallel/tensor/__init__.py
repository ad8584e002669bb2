"""Tensor parallelism (Megatron semantics) with sequence parallelism between blocks: the
collectives as autograd functions (comm.py), how parameters are sliced and which gradients
are partial (layers.py), vocabulary-parallel embedding and cross-entropy (vocab.py), gradient
reduction and norm (grads.py), and layout-free checkpoints of sliced parameters
(checkpoint.py). The model is sliced from outside (distca/parallelize/tensor_parallel.py)."""
