"""The decoder: embed -> blocks (mixer + SwiGLU, pre-norm) -> final norm. The LM head lives in
the loss (chunked), so full [tokens x vocab] logits are never materialised."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from distca.config.schema import Recompute
from distca.model.init import initial_value
from distca.model.layers import RMSNorm, SwiGLU, autocast_dtype
from distca.model.linear_attention import LinearAttention
from distca.model.rope import rope_cos_sin
from distca.model.nano_batches import NanoBatchAttention, NanoLayer, NanoSequenceLayout, NanoStream
from distca.model.softmax_attention import SoftmaxAttention
from distca_kernels.linear_ce import linear_cross_entropy_sum


class ChunkedLMHead(nn.Module):
    """The output projection fused with the loss (distca_kernels/linear_ce): logits exist one chunk
    at a time and are never recomputed; the gradients are made in the forward. A module of its
    own so that ZeRO-3 gathers its weight around its forward."""
    def __init__(self, dim: int, vocab_size: int, chunk: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        self.chunk = chunk

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy_sum(hidden, self.weight, labels, self.chunk,
                                        compute_dtype=autocast_dtype(hidden))


class Block(nn.Module):
    def __init__(self, dim: int, ffn: int, mixer: nn.Module, eps: float):
        super().__init__()
        self.mixer_norm = RMSNorm(dim, eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, ffn)
        # set by tensor parallelism (tp > 1, parallel/tensor/reshard.py: NanoSequenceParallel):
        # the residual stream is row-sharded; nano-batches move and gather their own rows
        self.nano_sp: NanoSequenceLayout | None = None

    def forward(self, x, shard, rope, recompute_mlp: bool = False):
        x = x + self.mixer(self.mixer_norm(x), shard, rope)
        if recompute_mlp:
            # selective recompute: the attention half above keeps its activations (no attention,
            # no collective is ever re-run); the MLP half keeps only its input x
            return x + checkpoint(self._mlp_branch, x, use_reentrant=False)
        return x + self._mlp_branch(x)

    def _mlp_branch(self, x):
        return self.mlp(self.mlp_norm(x))

    # ---- nano-batches (distca/model/nano_batches.py declares the interface) -----------------
    def nano_rows(self, shard, device, dtype):
        """Two nano-batches' rows when this block's core attention runs them in phases (a
        NanoBatchAttention that says so for this micro-batch), else None."""
        mix = self.mixer
        if not isinstance(mix, SoftmaxAttention) or not isinstance(mix.core_attention, NanoBatchAttention):
            return None
        return mix.core_attention.nano_rows(shard, device, self.nano_layer(dtype))

    def nano_layer(self, dtype) -> NanoLayer:
        """This block's shapes and linear FLOPs per token (2 forward + 4 backward per weight;
        on this rank's slices under tensor parallelism)."""
        mix, mlp = self.mixer, self.mlp
        after = mix.out.weight.numel() + mlp.gate_up.weight.numel() + mlp.down.weight.numel()
        return NanoLayer(mix.heads, mix.kv_heads, mix.head_dim, dtype,
                         6.0 * mix.qkv.weight.numel(), 6.0 * after)

    def forward_nanobatches(self, x0, x1, shard, ropes, recompute_mlp: bool = False):
        """Nano-batch ping-pong: each nano-batch's attention communication runs while the other
        computes (parallel/cad/nanobatch.py has the schedule); rows are token-wise, so the
        norms, projections and MLP of a nano-batch are those of its rows. x0, x1: the stream's
        nano-batches (a NanoStream's parts: row-sharded on their own under sequence
        parallelism); ropes: each one's (cos, sin) rows. Returns both nano-batches' outputs."""
        mix, core, sp = self.mixer, self.mixer.core_attention, self.nano_sp
        handles = []
        for n, (xn, rope) in enumerate(zip((x0, x1), ropes)):
            h = self.mixer_norm(xn)
            if sp is not None:
                h = sp.gather(h, rope[0].shape[0])
            q, k, v = mix.project(h, rope)
            handles.append(core.start(q, k, v, shard, n, mix.scale))
        handles = [core.serve(h) for h in handles]
        outs = []
        for xn, h in zip((x0, x1), handles):
            a = mix.output(core.collect(h))
            xn = xn + (a if sp is None else sp.scatter(a))
            mlp = checkpoint(self._mlp_branch, xn, use_reentrant=False) if recompute_mlp else self._mlp_branch(xn)
            outs.append(xn + mlp)
        return tuple(outs)


class HybridLM(nn.Module):
    """Built with parameters on the meta device when asked (nothing allocated: the parallel
    plan is applied first and each rank materialises only its part,
    distca/parallelize/materialize.py), else on the CPU with every parameter at its
    initial value for `seed`."""

    def __init__(self, mcfg, vocab_size: int, core_attention, linear_attention, seed: int = 0):
        super().__init__()
        self.cfg = mcfg
        dim, heads = mcfg.hidden, mcfg.heads
        self.head_dim = hd = head_dim(mcfg)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        blocks = []
        for i, kind in enumerate(mcfg.layers):
            if kind == "S":
                mixer = SoftmaxAttention(dim, heads, mcfg.kv_heads, hd, core_attention, mcfg.qkv_bias,
                                         mcfg.out_bias, mcfg.qk_norm, mcfg.norm_eps)
            else:
                mixer = LinearAttention(dim, heads, hd, linear_attention, mcfg.linear_decay,
                                        i, len(mcfg.layers))
            blocks.append(Block(dim, mcfg.ffn_hidden, mixer, mcfg.norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(dim, mcfg.norm_eps)
        self.lm_head = ChunkedLMHead(dim, vocab_size, mcfg.loss_chunk_tokens)
        if mcfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # True on a rank whose weights need no gradient (a CAD pool rank,
        # distca/parallelize/pool_rank.py): the embedding's output is then made to require
        # one, so the backward still runs through every layer and its collectives
        self.grad_from_embedding = False
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not p.is_meta:  # a meta build is filled per rank, after the plan is applied
                    p.copy_(initial_value(name, tuple(p.shape), mcfg, seed))

    def forward(self, input_ids: torch.Tensor, shard, labels: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T_local] in the shard's local order -> the summed next-token loss over
        `labels` (not -100), or the final hidden states [T_local, dim] without labels."""
        x = self.embed_tokens(input_ids)
        x = self.run_blocks(x, shard, range(len(self.blocks)))
        return self.head(x, labels)

    # The three parts of the forward, also run separately by pipeline stages.
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        return x.requires_grad_() if self.grad_from_embedding else x

    def run_blocks(self, x: torch.Tensor, shard, layers) -> torch.Tensor:
        """Blocks `layers` (indices into self.blocks, in order) over hidden states x."""
        dtype = autocast_dtype(x) or x.dtype
        rope = rope_cos_sin(shard.position_ids.to(x.device), self.head_dim, self.cfg, dtype)
        mode = recompute_mode(self.cfg) if self.training and torch.is_grad_enabled() else Recompute.none
        full, selective = mode == Recompute.full, mode == Recompute.selective
        stream = None  # a NanoStream while consecutive blocks run nano-batches
        for i in layers:
            blk = self.blocks[i]
            rows = blk.nano_rows(shard, x.device, dtype) if isinstance(blk, Block) else None
            if rows is None:
                if stream is not None:
                    x, stream = stream.leave(), None
                x = checkpoint(blk, x, shard, rope, use_reentrant=False) if full else blk(x, shard, rope, selective)
                continue
            if stream is None:  # the stream splits once for a run of such blocks
                stream = NanoStream(x, shard, rows, blk.nano_sp, rope)
            args = (*stream.parts, shard, stream.ropes)
            stream.parts = list(checkpoint(blk.forward_nanobatches, *args, use_reentrant=False) if full
                                else blk.forward_nanobatches(*args, selective))
        return x if stream is None else stream.leave()

    def head(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        return x if labels is None else self.lm_head(x, labels)

    def num_params(self, exclude_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding and not self.cfg.tie_embeddings else n


def head_dim(mcfg) -> int:
    """model.head_dim, or hidden // heads when it is -1."""
    return mcfg.head_dim if mcfg.head_dim > 0 else mcfg.hidden // mcfg.heads


def recompute_mode(mcfg) -> Recompute:
    """model.recompute, or the deprecated model.checkpoint_activations when only it is set."""
    if mcfg.checkpoint_activations is None:
        return Recompute(mcfg.recompute)
    return Recompute.full if mcfg.checkpoint_activations else Recompute.none


def deprecation_messages(mcfg) -> list[str]:
    """What the trainer prints once at start-up for deprecated model keys."""
    if mcfg.checkpoint_activations is None:
        return []
    return [f"model.checkpoint_activations is deprecated and will be removed in the next release; "
            f"use model.recompute={recompute_mode(mcfg).value} (none | selective | full)"]


def validate_model_config(mcfg) -> None:
    """Errors name the field and the fix, before any process group or allocation. Rules that
    involve parallel degrees (heads vs tp, ulysses) are the parallel plan's."""
    if not mcfg.layers or set(mcfg.layers) - {"S", "L"}:
        raise ValueError(f"model.layers={mcfg.layers!r} must be a non-empty string of 'S' (softmax) "
                         "and 'L' (linear attention), e.g. SSSS or LLLS")
    if mcfg.kv_heads < 1 or mcfg.heads < 1:
        raise ValueError(f"model.heads={mcfg.heads} and model.kv_heads={mcfg.kv_heads} must be >= 1")
    if mcfg.heads % mcfg.kv_heads:
        raise ValueError(f"model.heads={mcfg.heads} is not a multiple of model.kv_heads={mcfg.kv_heads}")
    if mcfg.head_dim <= 0 and mcfg.hidden % mcfg.heads:
        raise ValueError(f"model.hidden={mcfg.hidden} is not divisible by model.heads={mcfg.heads}; "
                         "set model.head_dim explicitly")
    if mcfg.checkpoint_activations is not None and Recompute(mcfg.recompute) not in (
            Recompute.none, recompute_mode(mcfg)):
        raise ValueError(f"model.checkpoint_activations={mcfg.checkpoint_activations} (deprecated) "
                         f"contradicts model.recompute={Recompute(mcfg.recompute).value}; drop "
                         "model.checkpoint_activations and keep model.recompute")
    if head_dim(mcfg) % 2:
        raise ValueError(f"head dim {head_dim(mcfg)} must be even for RoPE; change model.hidden/model.heads "
                         "or model.head_dim")


def build_model(mcfg, vocab_size: int, core_attention, linear_attention, seed: int,
                meta: bool = False) -> HybridLM:
    """The whole model on the CPU in fp32 at its initial values for `seed` (layout-independent:
    distca/model/init.py), or with meta parameters (`meta`: shapes only, nothing allocated)."""
    validate_model_config(mcfg)
    if meta:
        with torch.device("meta"):
            return HybridLM(mcfg, vocab_size, core_attention, linear_attention, seed)
    # construction draws from torch's global RNG (nn.Linear's own init, overwritten): keep the
    # caller's stream as it was
    with torch.random.fork_rng(devices=[]):
        return HybridLM(mcfg, vocab_size, core_attention, linear_attention, seed)
