"""Analyses built on diffs and masks: overlap, rank, dynamics, closeness and bf16 absorption."""
