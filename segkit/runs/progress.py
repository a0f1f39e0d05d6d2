"""Progress of long loops: a tqdm bar on a terminal, plain lines every few seconds anywhere else.

A tqdm bar redraws one line with carriage returns: right on a terminal, debris in a log file,
and invisible where stderr is not a terminal (segkit hid it there, so a job's log showed one
line per epoch and nothing during validation or inference). Off a terminal :class:`Progress`
prints a plain line instead, at most every ``SEGKIT_PROGRESS_SECONDS`` seconds (default 5):

    epoch 3/10: 120/512 batches (23%), 4.1 batches/s, ETA 1 min 36 s, loss 0.4120

and one closing line with the total time when it printed any. Under torchrun only rank 0
shows progress (the callers pass ``enabled``).
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["Progress", "format_seconds", "line_interval"]

DEFAULT_SECONDS = 5.0


def line_interval() -> float:
    """Seconds between plain progress lines: $SEGKIT_PROGRESS_SECONDS, else 5."""
    try:
        return max(0.0, float(os.environ.get("SEGKIT_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def format_seconds(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 04 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or unusual streams
        return False


class Progress:
    """``with Progress(total, desc="infer a.tif", unit="tiles") as p: ... p.update(n, loss=0.41)``.

    ``iterate(iterable)`` updates by one per item. ``enabled=False`` shows nothing. The mode is
    chosen once from ``stream`` (default stderr): ``bar`` on a terminal, ``lines`` elsewhere.
    """

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it", enabled: bool = True,
                 stream=None, interval: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = line_interval() if interval is None else float(interval)
        self.mode = "off" if not enabled else ("bar" if _is_terminal(self.stream) else "lines")
        self.done, self.info, self.lines = 0, {}, 0
        self.start = self._last = time.monotonic()
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        self.info.update(info)
        if self._bar is not None:
            if info:
                self._bar.set_postfix(info, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._print(self._line(now))

    def set_info(self, **info) -> None:
        """Values shown after the rate (e.g. loss=..., lr=...), kept until changed."""
        self.update(0, **info)

    def iterate(self, iterable):
        for item in iterable:
            yield item
            self.update(1)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {format_seconds((self.total - self.done) / rate)}"
        return text + "".join(f", {k} {v}" for k, v in self.info.items())

    def _print(self, text: str) -> None:
        self.lines += 1
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.lines:
            now = time.monotonic()
            self._print(self._line(now) + f", done in {format_seconds(now - self.start)}")
        self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
