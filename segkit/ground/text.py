"""Library messages cut to a size a one-line error can hold.

torch, GEOS and friends explain an error in paragraphs; segkit's line quotes the first
sentence, cut at a word (and marked) rather than mid-sentence.
"""

from __future__ import annotations


def first_sentence(text: str, limit: int = 160) -> str:
    """The first line of ``text`` up to its first full stop, cut at a word past ``limit`` (marked ...)."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    end = line.find(". ")
    if end > 0:
        line = line[:end]
    line = line.rstrip(".")
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."
