"""The one exception type for expected user mistakes.

The CLI prints a SegkitError as a single ``error: ...`` line and exits non-zero
without a traceback; every other exception is a bug and keeps its traceback.
"""


class SegkitError(Exception):
    """A bad input, file or option, described in one line that names what is wrong."""


_WARNED: set = set()


def warn_once(message: str, *, stacklevel: int = 2) -> None:
    """A UserWarning shown once per message in a command (readers reopen files in every worker and
    evaluation pass; the same warning twenty times hides the one line that matters)."""
    import warnings

    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def reset_warnings() -> None:
    """Forget the warnings shown (the CLI calls this at the start of every command)."""
    _WARNED.clear()
