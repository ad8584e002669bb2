"""Tensor parallelism applied to the model from outside its code (torchtitan's
`parallelize_*` idea, Megatron's semantics): the full model is built and seeded on one device
as always, then every rank keeps its slice of each layer (`distca/parallelize/apply.py` calls
this in its place among the other transformations).

- Softmax attention: QKV column-parallel by heads ([q | k | v] parts sliced separately, its
  bias alike), output projection row-parallel (its bias added once over the group); q/k norms
  (one weight shared by the heads) stay whole; each rank runs its H/tp query and KV/tp KV heads
  through the core-attention strategy of its own CP / CAD group.
- Linear attention: q/k/v, output gate and (per-token) decay projection column-parallel by
  heads, the constant per-head decays sliced alike, output projection row-parallel; the output
  norm weight (shared by all heads) stays whole, its gradient partial per rank.
- SwiGLU: gate/up column-parallel ([gate | up] parts), down row-parallel.
- Sequence parallelism between blocks: the residual stream, the norms and the adds hold
  ceil(T / tp) tokens per rank; each mixer and MLP all-gathers its input and reduce-scatters
  its output (parallel/tensor/layers.py: hooks, so parameter names do not change).
- Embedding and LM head vocabulary-parallel, the loss computed across the TP group without
  full-vocabulary logits (parallel/tensor/vocab.py); tied weights stay one parameter.

Every sliced parameter is tagged with its `TPSlice` at any tp (tp = 1 included), so gradient
reduction and checkpoints see the same parameter parts whatever the layout.
"""
from __future__ import annotations

import torch.distributed as dist

from distca.model.linear_attention import LinearAttention
from distca.model.softmax_attention import SoftmaxAttention
from distca.model.transformer import Block, HybridLM
from parallel.tensor.layers import TPSlice, sequence_parallel, shard_buffer, shard_parameter
from parallel.tensor.vocab import VocabParallelEmbedding, VocabParallelLMHead


def _bias_once(linear, tp: int) -> None:
    """A row-parallel layer's outputs are partial sums that the sequence-parallel reduce-scatter
    adds up over the TP ranks: each rank adds bias / tp, so the sum holds the bias once (and
    each rank's bias gradient is 1/tp of the whole, summed over TP like any replicated one)."""
    def add_share(module, _args, output):
        return output - module.bias * (1.0 - 1.0 / tp)
    linear.register_forward_hook(add_share)


def apply_tensor_parallel(model: HybridLM, group) -> HybridLM:
    """Slice `model` in place for this rank of `group` (None: one rank, tags only)."""
    tp = dist.get_world_size(group) if group is not None else 1
    rank = dist.get_rank(group) if group is not None else 0

    def shard(module, name, *parts, dim=0):
        shard_parameter(module, name, TPSlice(dim, tuple(parts)), rank, tp)

    for blk in model.blocks:
        if not isinstance(blk, Block):  # a layer of another pipeline stage
            continue
        mix = blk.mixer
        if isinstance(mix, SoftmaxAttention):
            q, kv = mix.heads * mix.head_dim, mix.kv_heads * mix.head_dim
            shard(mix.qkv, "weight", q, kv, kv)
            if mix.qkv.bias is not None:
                shard(mix.qkv, "bias", q, kv, kv)
            shard(mix.out, "weight", q, dim=1)
            if mix.out.bias is not None and tp > 1:
                _bias_once(mix.out, tp)
            mix.heads, mix.kv_heads = mix.heads // tp, mix.kv_heads // tp
        elif isinstance(mix, LinearAttention):
            width = mix.heads * mix.head_dim
            shard(mix.qkv, "weight", width, width, width)
            shard(mix.gate, "weight", width)
            shard(mix.out, "weight", width, dim=1)
            if hasattr(mix, "decay_proj"):
                shard(mix.decay_proj, "weight", mix.heads)
                shard(mix.decay_proj, "bias", mix.heads)
            shard_buffer(mix, "g_gamma", TPSlice(0, (mix.heads,)), rank, tp, persistent=False)
            mix.heads = mix.heads // tp
        else:
            raise TypeError(f"no tensor-parallel rule for mixer {type(mix).__name__}")
        ffn = blk.mlp.down.in_features
        shard(blk.mlp.gate_up, "weight", ffn, ffn)
        shard(blk.mlp.down, "weight", ffn, dim=1)
        if tp > 1:
            sequence_parallel(mix, group, tokens_from=lambda args: args[1].num_tokens)
            sequence_parallel(blk.mlp, group)

    # the embedding and LM head; a pipeline stage may hold one of them, or neither
    embed, head = model.embed, model.lm_head
    tied = embed is not None and head is not None and head.weight is embed.weight
    for module in (embed, head):
        if module is not None and not (tied and module is head):
            shard(module, "weight", module.weight.shape[0])
    if tied:
        head.weight = embed.weight
    if tp > 1:
        if embed is not None:
            model.embed = VocabParallelEmbedding(embed.weight, rank * embed.weight.shape[0], group)
        if head is not None:
            model.lm_head = VocabParallelLMHead(head.weight, rank * head.weight.shape[0], group, head.chunk)
    return model
