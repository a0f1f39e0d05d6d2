"""`segkit infer`: stream images through a run's models into RLE, polygons or TIFFs."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.ground.config import load_config


@click.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--run", "-r", "runs", multiple=True, metavar="RUN",
              help="Run(s) to predict with (repeatable: several runs are averaged). Default: the newest run. "
                   "Under torchrun spell it -r: torchrun's own parser rejects --run as ambiguous.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live.")
@click.option("--epochs", default=None,
              help="Checkpoints averaged per run: last:K, best, all or a list like 8,9,10. Default: infer.epochs (last:3).")
@click.option("--soup", is_flag=True, help="Average the checkpoints' weights into one model instead of their predictions.")
@click.option("--tta", default=None,
              help="Test-time augmentation: none, hflip (original 0.6 + hflip 0.4), flips, d4, or view:weight,... "
                   "Default: infer.tta (hflip).")
@click.option("--rle", "rle_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Kaggle CSV `id,rle`: 'start length' pairs, column-major (top to bottom, then left to "
                   "right), 1-indexed, as in HuBMAP. infer.rle_order=C switches to row-major.")
@click.option("--polygons", default=None, help="Write GeoJSON polygons (CRS coordinates when the image has one). "
                                                 "With several images, put {id} in the path.")
@click.option("--mask", default=None, help="Write a tiled, compressed class-id mask TIFF ({id} for several images).")
@click.option("--probs", default=None, help="Write probabilities as a tiled uint8 TIFF (0..255; {id} for several images).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing (needs the crf extra: pip install 'segkit[crf]').")
@click.option("--threshold", type=float, default=None, help="Probability threshold. Default: infer.threshold (0.5).")
@click.option("--overlap", "overlap_px", type=int, default=None, help="Tile overlap in source pixels. Default: infer.overlap_px.")
@click.option("--margin", "margin_px", type=int, default=None,
              help="Context margin in source pixels: each tile is predicted, only its centre is kept. "
                   "Default: infer.margin_px (0).")
@click.option("--skip-background", is_flag=True, default=None,
              help="Do not run tiles that are background on the thumbnail (output 0 there); method: infer.tissue.")
@click.option("--batch-size", type=int, default=None, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override infer.* keys of the run's config.")
def infer(images, runs, runs_dir, epochs, soup, tta, rle_path, polygons, mask, probs, crf, threshold, overlap_px,
          margin_px, skip_background, batch_size, device, overwrite, overrides):
    """Predict large images tile by tile and write RLE, polygons or TIFFs.

    Tiles overlap and are blended with gaussian weights in row strips, so memory stays at about
    one strip whatever the image size. Without IMAGES, the run's manifest images are predicted.
    Under `torchrun --nproc_per_node=N -m segkit.cli infer ...` the images are split across ranks.
    """
    from segkit.infer.run import Outputs, image_list, infer_images, infer_settings, load_ensemble
    from segkit.runs import distributed
    from segkit.runs.device import pick_device
    from segkit.runs.rundir import resolve_run

    run_dirs = [resolve_run(spec, Path(runs_dir)) for spec in runs] or [resolve_run(None, Path(runs_dir))]
    base = load_config(run_dirs[0] / "config.yaml")
    shortcuts = {"infer.epochs": epochs, "infer.tta": tta, "infer.threshold": threshold,
                 "infer.overlap_px": overlap_px, "infer.batch_size": batch_size, "infer.margin_px": margin_px,
                 "infer.skip_background": True if skip_background else None}
    config = load_config(None, list(overrides) + [f"{k}={v}" for k, v in shortcuts.items() if v is not None], base=base)
    settings = infer_settings(config, crf=crf)
    if not images:
        from segkit.data.split import load_rows

        images = sorted({str(row.image) for row in load_rows(config.data.manifest)})
    dist_info = distributed.setup(device)  # a no-op outside torchrun
    try:
        device_obj = dist_info.device if dist_info.world_size > 1 else pick_device(device)
        ensemble = load_ensemble(run_dirs, config.infer.epochs, device_obj, soup=soup)
        outputs = Outputs(Path(rle_path) if rle_path else None, polygons, mask, probs, overwrite)
        written = infer_images(ensemble, image_list([Path(p) for p in images]), outputs, settings, device_obj)
    finally:
        distributed.cleanup()
    if dist_info.rank == 0:
        checkpoints = ", ".join(p.name for p in ensemble.checkpoints)
        click.echo(f"predicted {len(images)} image(s) with {len(ensemble.models)} model(s) [{checkpoints}], "
                   f"tta {settings.tta}" + (f", {dist_info.world_size} ranks" if dist_info.world_size > 1 else ""))
        for path in written:
            click.echo(f"wrote {path}")
