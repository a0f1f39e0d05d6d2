"""The one exception type for expected user mistakes.

The CLI prints a SegkitError as a single ``error: ...`` line and exits non-zero
without a traceback; every other exception is a bug and keeps its traceback.
"""


class SegkitError(Exception):
    """A bad input, file or option, described in one line that names what is wrong."""
