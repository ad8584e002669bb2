"""Optimisation: the AdamW factory the data-parallel engines build from (`adamw`) and the
learning-rate schedule, linear warm-up then cosine decay (`lr_schedule`)."""
