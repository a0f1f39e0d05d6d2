"""Label sources: masks, instance ids, polygons and RLE CSVs read per window."""
