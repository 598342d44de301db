"""The task zoo: task families with meta-training and held-out ranges (no downloads)."""
