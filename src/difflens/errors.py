"""One error type for bad input: the CLI prints its message on one line and exits non-zero.

Also the one way to import a heavy optional dependency (an "extra" of the package, see README.md,
"Install"): :func:`require` returns the module or raises a DifflensError naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class DifflensError(ValueError):
    """Bad input or configuration, with a message that names the problem."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported, or one line: "WHAT needs the 'EXTRA' extra: pip install 'difflens[EXTRA]'"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DifflensError(f"{what} needs the '{extra}' extra: pip install 'difflens[{extra}]'") from None


def has_module(module: str) -> bool:
    """Whether an optional dependency can be imported (for choices that fall back without it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
