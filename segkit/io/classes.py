"""Class names and colours: one palette for every output that shows classes.

Class id 0 is background in segmentation masks. ``class_colour`` gives each foreground id a fixed
colour (1 red, 2 green, 3 blue, ... cycling through ``PALETTE``), so the preview grid, the
colour table of ``--mask`` TIFFs and the QuPath classification of ``--polygons`` all draw a class
the same way, in every run and every file.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["PALETTE", "BACKGROUND_COLOUR", "class_colour", "class_name"]

# RGB colours of class ids 1, 2, 3, ...: saturated, far apart, readable on grey and on H&E.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 0), (255, 0, 255),
    (0, 255, 255), (255, 140, 0), (160, 90, 255), (255, 255, 255), (128, 255, 160),
)
BACKGROUND_COLOUR = (0, 0, 0)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB (0..255) of a class id: black for 0, else ``PALETTE`` cycled (id 11 = id 1)."""
    class_id = int(class_id)
    if class_id <= 0:
        return BACKGROUND_COLOUR
    return PALETTE[(class_id - 1) % len(PALETTE)]


def class_name(class_id: int, names: Sequence[str] | None = None) -> str:
    """The name of a class id: ``names[class_id]`` (``data.class_names``, id 0 = background first),
    else ``"class K"``."""
    class_id = int(class_id)
    if names is not None and 0 <= class_id < len(names):
        return str(names[class_id])
    return f"class {class_id}"
