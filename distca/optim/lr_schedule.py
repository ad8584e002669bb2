"""Learning-rate schedule: linear warm-up, then cosine decay to min_lr_ratio x lr."""
import math


def lr_at(step: int, tcfg) -> float:
    """LR for optimizer step `step` (1-based)."""
    if tcfg.warmup_steps > 0 and step <= tcfg.warmup_steps:
        return tcfg.lr * step / tcfg.warmup_steps
    span = max(tcfg.steps - tcfg.warmup_steps, 1)
    progress = min(max(step - tcfg.warmup_steps, 0) / span, 1.0)
    floor = tcfg.lr * tcfg.min_lr_ratio
    return floor + (tcfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
