"""segkit: segmentation of very large images, the way competition winners do it.

The public Python API (each name is imported on first use, so ``import segkit`` stays light and
the CLI starts fast):

    open_raster(path)                       a Raster: .read(window, out_size), .thumbnail(side),
                                            .height, .width, .channels, .dtype, .crs, .transform
    Window(row, col, height, width)         the one rectangle type, in source pixels
    random_windows(images, labels, fov_px=, size=, length=)
                                            a torch Dataset of random windows for your own loop
    Preprocess                              the preprocess contract: raw HWC in, float32 HWC out
    load_run(run_dir, epochs=)              a run's models, preprocess, fov_px, size and classes
    predict_image(image, model, rle=, mask=, probs=, polygons=, ...)
                                            one image through any model(s) or a run, streamed into
                                            segkit's writers (or returned as probabilities)
    predict_strips(predictor, raster, ...)  the streaming tiled predictor itself
    EnsemblePredictor(models, tta, ...)     models x TTA views as one predictor callable
    encode_rle(mask), decode_rle(rle, shape), write_rle_csv(path, rows)
                                            Kaggle RLE (column-major, 1-indexed by default)
    SegkitError                             every expected error (bad input, bad file)
"""

from segkit.ground import __version__

_API = {
    "open_raster": ("segkit.io.images.raster", "open_raster"),
    "Window": ("segkit.ground.geometry", "Window"),
    "random_windows": ("segkit.data.inputs", "random_windows"),
    "Preprocess": ("segkit.data.preprocess", "Preprocess"),
    "load_run": ("segkit.infer.image", "load_run"),
    "predict_image": ("segkit.infer.image", "predict_image"),
    "predict_strips": ("segkit.infer.predict", "predict_strips"),
    "EnsemblePredictor": ("segkit.infer.ensemble", "EnsemblePredictor"),
    "encode_rle": ("segkit.io.rle", "encode"),
    "decode_rle": ("segkit.io.rle", "decode"),
    "write_rle_csv": ("segkit.io.writers.strips", "write_rle_csv"),
    "SegkitError": ("segkit.ground.errors", "SegkitError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'segkit' has no attribute {name!r}")
    import importlib

    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(__all__)
