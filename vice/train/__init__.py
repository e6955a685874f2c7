"""Training: optimizer and schedule, checkpoints, the loop."""
