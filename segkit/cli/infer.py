"""`segkit infer`: stream images through a run's models into RLE, polygons or TIFFs."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.cli.flags import setting_option, setting_options
from segkit.cli.options import command_config, common_options, run_option, runs_folder
from segkit.ground.config import TASKS, load_config
from segkit.ground.errors import SegkitError

RUNS = "the run's "  # infer starts from the run's config: a flag's default is the run's value

@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@common_options
@run_option(multiple=True, help="Run(s) to predict with (repeatable: several runs are averaged). Default: the "
                                "newest run. Under torchrun spell it -r: torchrun's parser rejects --run.")
@setting_option("infer.epochs", default_from=RUNS)
@click.option("--soup", is_flag=True, help="Average the checkpoints' weights into one model instead of their predictions.")
@setting_option("infer.tta", default_from=RUNS)
@click.option("--rle", "rle_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Kaggle CSV: 'start length' pairs, column-major (top to bottom, then left to right), "
                   "1-indexed, as in HuBMAP (infer.rle_order=C: row-major).")
@setting_options("infer.rle_header", "infer.rle_empty", default_from=RUNS)
@click.option("--polygons", default=None,
              help="Write GeoJSON polygons with QuPath's objectType, classification and measurements "
                   "({id} in the path for several images).")
@setting_options("infer.geojson_crs", "infer.object_type", "infer.simplify", "infer.min_polygon_area",
                 default_from=RUNS)
@click.option("--mask", default=None,
              help="Write class ids as a tiled TIFF with overviews and a colour table; a *.ome.tif path writes "
                   "a pyramidal OME-TIFF ({id} for several images).")
@click.option("--probs", default=None, is_flag=False, flag_value="", metavar="[OUT.tif]",
              help="seg: write probabilities as a tiled uint8 TIFF (0..255; {id} for several images). "
                   "cls: a switch (no file): one probability column per class in the --csv.")
@click.option("--instances", default=None,
              help="Runs with instance targets: write object ids as a tiled uint32 TIFF, georeferenced like the "
                   "image ({id} for several images).")
@setting_option("infer.rle_per_object", default_from=RUNS)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="cls: write `id,label` per image (the run's class names), atomically.")
@click.option("--task", "task", type=click.Choice(TASKS), default=None,
              help="The run's task, checked (a cls run cannot write masks, a seg run no class CSV). "
                   "Default: the run's own task.")
@setting_option("infer.calibrate", default_from=RUNS)
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing (needs the crf extra: pip install 'segkit[crf]').")
@setting_options("infer.threshold", "infer.overlap_px", "infer.margin_px", "infer.skip_background",
                 "infer.batch_size", default_from=RUNS)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--resume", is_flag=True, help="Skip images an interrupted run already wrote; keep each image's "
                                            "outputs as it finishes (RLE rows in a journal until the end).")
def infer(images, config_path, overrides, run, soup, rle_path, polygons, mask, probs, instances, csv_path, task,
          crf, overwrite, resume):
    """Predict large images tile by tile and write RLE, polygons or TIFFs.

    Tiles overlap and are blended with gaussian weights in row strips, so memory stays at about
    one strip whatever the image size. Without IMAGES, the run's manifest images are predicted; a folder
    stands for its image files. Images that fit in one tile are predicted many per forward pass.
    --config and --set apply on top of the run's config (infer.*, run.*, data.manifest,
    data.class_names, train.amp). Under `torchrun --nproc_per_node=N -m segkit.cli infer ...`
    the images are split across ranks. A cls run writes `--csv OUT.csv` with `id,label`
    (+ probabilities with --probs); a seg+cls run gates tiles with infer.cls_gate.
    Outputs appear whole or not at all; a killed infer leaves .NAME.PID.XXXX.tmp files next to
    them, removed by the next infer writing into that folder.
    """
    # why: a click command receives one parameter per option it declares; the settings flags are already folded
    # into given_flags().
    from segkit.infer.classes import check_task
    from segkit.infer.run import Outputs, image_list, infer_images, infer_settings, load_ensemble
    from segkit.io.atomic import output_folders, remove_stale_temps, staged_commits
    from segkit.runs import distributed
    from segkit.runs.device import enable_cudnn_benchmark, pick_device
    from segkit.runs.rundir import resolve_run

    folder = runs_folder(config_path, overrides)
    run_dirs = [resolve_run(spec, folder) for spec in run] or [resolve_run(None, folder)]
    config = command_config("infer", config_path, overrides, base=load_config(run_dirs[0] / "config.yaml"))
    run_task = check_task(config, run_dirs[0], task, any((rle_path, polygons, mask, instances)), csv_path is not None)
    if config.infer.cls_gate is not None and run_task != "seg+cls":
        raise SegkitError(f"infer.cls_gate: {run_dirs[0]} is a {run_task} run; gating needs a seg+cls run")
    if run_task == "cls":
        if probs:
            raise SegkitError(f"--probs {probs}: with a cls run --probs is a switch that adds probability "
                              "columns to the --csv (put it after the images)")
        return _infer_classes(config, images, run_dirs, soup, csv_path, probs is not None, overwrite)
    if probs == "":
        raise SegkitError("--probs: give the probability TIFF to write (--probs OUT.tif)")
    settings = infer_settings(config, crf=crf)
    if not images:
        from segkit.data.split import load_rows

        images = sorted({str(row.image) for row in load_rows(config.data.manifest)})
    dist_info = distributed.setup(config.run.device, timeout_s=config.run.dist_timeout_s)  # no-op outside torchrun
    try:
        device_obj = dist_info.device if dist_info.world_size > 1 else pick_device(config.run.device)
        enable_cudnn_benchmark(device_obj)
        ensemble = load_ensemble(run_dirs, config.infer.epochs, device_obj, soup=soup)
        outputs = Outputs(Path(rle_path) if rle_path else None, polygons, mask, probs, overwrite, instances,
                          resume=resume)
        remove_stale_temps(*output_folders(rle_path, polygons, mask, probs, instances))
        with staged_commits():  # all outputs of the invocation, or none
            from segkit.infer.folder import expand_images

            images = expand_images([Path(p) for p in images])  # a folder stands for its image files
            written = infer_images(ensemble, image_list(images), outputs, settings, device_obj)
    finally:
        distributed.cleanup()
    if dist_info.rank == 0:
        checkpoints = ", ".join(p.name for p in ensemble.checkpoints)
        click.echo(f"predicted {len(images)} image(s) with {len(ensemble.models)} model(s) [{checkpoints}], "
                   f"tta {settings.tta}" + (f", {dist_info.world_size} ranks" if dist_info.world_size > 1 else "")
                   + _hardware(settings.batch_size, device_obj, settings.amp))
        for path in written:
            click.echo(f"wrote {path}")


def _hardware(batch_size, device, amp: bool) -> str:
    """What the device made of the automatic choices: ", batch 16 on cuda:0 (bf16)"."""
    from segkit.runs.device import infer_batch_size, precision_name

    return f", batch {infer_batch_size(batch_size, device)} on {device} ({precision_name(device, amp)})"


def _infer_classes(config, images, run_dirs, soup, csv_path, with_probs, overwrite):
    """The cls branch of `segkit infer`: rows (IMAGES, or the run's manifest rows) -> --csv."""
    from segkit.data.split import load_rows
    from segkit.infer.classes import ClassSettings, image_rows, infer_classes, run_temperature
    from segkit.infer.run import load_ensemble
    from segkit.runs import distributed
    from segkit.runs.device import enable_cudnn_benchmark, pick_device

    if csv_path is None:
        raise SegkitError("no output chosen: a cls run writes --csv OUT.csv")
    rows = image_rows([Path(p) for p in images]) if images else load_rows(config.data.manifest)
    dist_info = distributed.setup(config.run.device,
                                  timeout_s=config.run.dist_timeout_s)  # a no-op outside torchrun
    try:
        device_obj = dist_info.device if dist_info.world_size > 1 else \
            pick_device(config.run.device)
        enable_cudnn_benchmark(device_obj)
        ensemble = load_ensemble(run_dirs, config.infer.epochs, device_obj, soup=soup)
        settings = ClassSettings(tta=config.infer.tta, batch_size=config.infer.batch_size, amp=config.train.amp)
        temperature = 1.0
        if config.infer.calibrate:  # rank 0 fits (and saves) it; the others use its value
            fitted = run_temperature(run_dirs[0], ensemble, settings, device_obj) if dist_info.rank == 0 else None
            temperature = distributed.all_gather_objects(fitted)[0]
        written = infer_classes(ensemble, rows, Path(csv_path), config.data.class_names, settings=settings,
                                device=device_obj, with_probs=with_probs, temperature=temperature,
                                overwrite=overwrite)
    finally:
        distributed.cleanup()
    if dist_info.rank != 0:
        return
    checkpoints = ", ".join(p.name for p in ensemble.checkpoints)
    calibrated = f", temperature {temperature:.3f}" if config.infer.calibrate else ""
    ranks = f", {dist_info.world_size} ranks" if dist_info.world_size > 1 else ""
    click.echo(f"classified {len(rows)} image(s) with {len(ensemble.models)} model(s) [{checkpoints}], "
               f"tta {settings.tta}{calibrated}{ranks}" + _hardware(settings.batch_size, device_obj, settings.amp))
    click.echo(f"wrote {written}")
