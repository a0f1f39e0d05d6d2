"""Output writers: RLE CSV, tiled and OME TIFF, GeoJSON polygons, streamed from row strips."""
