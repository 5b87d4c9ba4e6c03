"""``python -m difflens.cli``."""

import sys

from difflens.cli import main

sys.exit(main())
