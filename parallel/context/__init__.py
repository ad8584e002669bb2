"""Context parallelism: the shard (which tokens a rank owns) and the attention strategies."""
from parallel.context.shard import Shard, build_shard
from parallel.context.strategy import Strategy

__all__ = ["Shard", "Strategy", "build_shard"]
