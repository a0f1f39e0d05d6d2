"""segkit: segmentation of very large images, the way competition winners do it."""

__version__ = "0.1.0"
