"""The ground floor's geometry: the one Window type, the one region clipper, the one weight normaliser.

Every layer above (io, data, post, infer) imports these; nothing here does I/O or uses torch.
All values are source pixels.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from segkit.ground.errors import SegkitError


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


def clip_region(height: int, width: int, region: Window | None, *, what: str = "") -> Window:
    """``region`` clipped to a height x width image; the whole image when ``region`` is None.

    Pixels outside the image do not exist, so a region that does not overlap the image at all
    is an error; ``what`` (e.g. the image or manifest row) prefixes its message.
    """
    height, width = int(height), int(width)
    if region is None:
        return Window(0, 0, height, width)
    r0, c0 = max(0, int(region.row)), max(0, int(region.col))
    r1, c1 = min(height, int(region.bottom)), min(width, int(region.right))
    if r1 <= r0 or c1 <= c0:
        where = f"{what}: " if what else ""
        raise SegkitError(f"{where}region {','.join(map(str, tuple(region)))} lies outside the "
                          f"{height}x{width} image")
    return Window(r0, c0, r1 - r0, c1 - c0)


def normalise_weights(weights: Sequence[float] | None, count: int, what: str = "ensemble") -> list[float]:
    """``count`` weights rescaled to sum to 1 (equal weights when ``weights`` is None).

    Used for every weighted mean in segkit: models of an ensemble, runs, TTA views. Negative
    weights, a zero sum or a count mismatch are one-line errors prefixed by ``what``.
    """
    if count <= 0:
        raise SegkitError(f"{what}: nothing to weigh")
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise SegkitError(f"{what}: {len(weights)} weights for {count} members")
    total = sum(weights)
    if any(not w >= 0 for w in weights) or not total > 0:
        raise SegkitError(f"{what}: weights must be >= 0 and sum to a positive number, got {weights}")
    return [w / total for w in weights]
