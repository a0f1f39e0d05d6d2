"""Pure window geometry: no I/O, no torch.

One Window type is used everywhere in segkit; all values are source pixels.
"""

from __future__ import annotations

from typing import NamedTuple


class Window(NamedTuple):
    """A rectangle in source pixels; may extend past the image border (readers pad)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.row + self.height

    @property
    def right(self) -> int:
        return self.col + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.bottom), slice(self.col, self.right)
