"""Runnable examples with their small checkpoints."""
