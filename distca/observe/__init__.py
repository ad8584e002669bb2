"""What a run shows and records: the console (banner, step lines, end summary, train.log),
the metrics interface (metrics.jsonl and W&B), the FLOP and MFU accounting (`flops`), and
`distca-report`, which draws a finished run's metrics."""
