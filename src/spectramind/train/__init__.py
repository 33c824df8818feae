"""Training: the loop, its guardrails, checkpoints, the pre-run plan and multi-process launch."""
