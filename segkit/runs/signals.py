"""SIGTERM handled like Ctrl-C, for every command (train and infer alike).

`kill`, `timeout` and job schedulers (Slurm before its SIGKILL, Kubernetes) send SIGTERM, and
Python's default for it is to die at once: outputs half-staged, run.json left "running".
Inside :func:`interrupt_on_sigterm` SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, so
the one cleanup path Ctrl-C already takes runs: temporary files discarded, staged outputs not
written, checkpoints kept, the run marked interrupted; the CLI then exits 128 + 15 = 143.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """A stop asked by a signal other than SIGINT (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
