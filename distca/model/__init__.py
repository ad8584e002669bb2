"""Llama-style decoder with softmax and linear-attention layers mixed by a pattern string."""
from distca.model.transformer import HybridLM, build_model

__all__ = ["HybridLM", "build_model"]
