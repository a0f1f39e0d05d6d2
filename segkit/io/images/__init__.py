"""Reading images: one raster interface over tifffile, rasterio and OpenCV, window by window."""
