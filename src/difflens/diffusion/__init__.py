"""Diffusion: processes and targets, preconditioning, estimators of the optimal loss, samplers, schedules.

Layer and imports: docs/architecture.md; the math: docs/method.md.
"""
