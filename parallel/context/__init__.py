"""Context parallelism: the shard (which tokens a rank owns) and the attention strategies."""
from parallel.context.api import build_core_attention, build_linear_attention
from parallel.context.shard import Shard, build_shard

__all__ = ["Shard", "build_shard", "build_core_attention", "build_linear_attention"]
