"""One error type for bad input: the CLI prints its message on one line and exits non-zero."""


class DifflensError(ValueError):
    """Bad input or configuration, with a message that names the problem."""
