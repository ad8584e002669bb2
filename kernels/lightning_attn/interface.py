"""Public entry point. Until the Triton kernel lands this dispatches to the torch reference."""
from kernels.lightning_attn.reference import lightning_attn_reference


def chunk_lightning_attn(q, k, v, g_gamma=None, g=None, scale=None, initial_state=None,
                         output_final_state=False, cu_seqlens=None):
    return lightning_attn_reference(q, k, v, g_gamma, g, scale, initial_state,
                                    output_final_state, cu_seqlens)
