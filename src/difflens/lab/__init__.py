"""Experiments: the 2-D toy lab and specialists → generalist distillation.

Layer and imports: docs/architecture.md.
"""
