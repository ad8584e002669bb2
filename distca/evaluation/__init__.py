"""Evaluation inside the training loop: held-out loss and perplexity (`held_out`) run over the
training layout every `eval.every` steps."""
