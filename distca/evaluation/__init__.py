"""Evaluation inside the training loop and on its own (distca-eval): the tasks of `eval.tasks`
(`tasks`: held-out loss (`held_out`), loss by position (`position_loss`), passkey retrieval
(`passkey`)), each run under the training layout through one forward path (`forward`), with
per-token scores of the LM head that never need full-vocabulary logits (`token_scores`).
`cli` is the distca-eval command."""
