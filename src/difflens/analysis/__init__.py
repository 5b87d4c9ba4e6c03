"""Analyses built on the kernel: optimal loss, diagnosis, gap, memorization, scaling, smoothing, trajectories.

Layer and imports: docs/architecture.md.
"""
