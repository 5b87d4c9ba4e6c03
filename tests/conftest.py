"""Test-wide settings: one torch thread per pytest worker (the suite runs with -n 2 on 2 cores)."""

import torch

torch.set_num_threads(1)
