"""Training: the loop, optimiser, checkpoints, work dirs, run reports."""
