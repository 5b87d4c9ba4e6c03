"""Test-wide settings.

One torch thread per pytest worker (the suite runs with -n 2 on 2 cores). Hypothesis runs
derandomized, without an example database: every machine (CI, a user's) runs the same examples.
"""

import torch
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("difflens", derandomize=True, database=None, print_blob=True)
settings.load_profile("difflens")
