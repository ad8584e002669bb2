"""Compute kernels: one folder per op, each with a Triton kernel, a plain-torch reference
that runs on the CPU, and a public function that validates inputs and dispatches."""
