"""Kaggle CSV conventions: the header of the contest, the empty-mask cell, fields of any length."""

import csv

import numpy as np
import pytest
import tifffile

from segkit.data.manifest import read_manifest
from segkit.io.labels.masks import open_labels
from segkit.io.images.raster import open_raster
from segkit.io.rle import RleStripEncoder, decode, encode
from segkit.io.writers.strips import RleStripWriter


@pytest.fixture
def default_csv_limit():
    """Python's own csv field limit (131072) while the test runs, whatever an earlier test set."""
    old = csv.field_size_limit(131072)
    yield
    csv.field_size_limit(old)


@pytest.mark.parametrize("header, empty", [(("id", "rle"), ""), (("ImageId", "EncodedPixels"), "-"),
                                           (("id", "predicted"), "")])
def test_header_and_empty_convention_read_back_by_segkit(tmp_path, header, empty):
    mask = np.zeros((7, 5), np.uint8)
    mask[2:5, 1:4] = 1
    for name, m in (("full", mask), ("empty", np.zeros_like(mask))):
        tifffile.imwrite(tmp_path / f"{name}.tif", m * 200)
    out = tmp_path / "sub.csv"
    with RleStripWriter(out, header=header, empty=empty) as writer:
        for name, m in (("full", mask), ("empty", np.zeros_like(mask))):
            encoder = RleStripEncoder(*m.shape)
            encoder.add(m[:3])
            encoder.add(m[3:])
            writer.write_row(name, encoder.finish())
    rows = list(csv.reader(open(out, newline="")))
    assert rows == [list(header), ["full", encode(mask)], ["empty", empty]]
    for name, m in (("full", mask), ("empty", np.zeros_like(mask))):
        labels = open_labels(out, open_raster(tmp_path / f"{name}.tif"))
        assert (labels.read((0, 0, 7, 5)) == m).all()


def test_dash_decodes_as_empty():
    assert decode("-", (3, 4)).sum() == 0 and decode(" - ", (3, 4)).shape == (3, 4)
    assert encode(np.zeros((3, 4), np.uint8)) == ""


def test_label_csv_with_a_field_longer_than_the_csv_default(tmp_path, default_csv_limit):
    height, width = 400, 700
    mask = np.zeros((height, width), np.uint8)
    mask[::2, :] = 1                                   # a run every other pixel: a long RLE
    rle = encode(mask)
    assert len(rle) > 131072
    tifffile.imwrite(tmp_path / "slide.tif", np.zeros((height, width), np.uint8))
    (tmp_path / "train.csv").write_text(f'id,encoding\nother,1 1\nslide,"{rle}"\n')
    labels = open_labels(tmp_path / "train.csv", open_raster(tmp_path / "slide.tif"))
    assert (labels.read((0, 0, height, width)) == mask).all()


def test_manifest_with_a_long_cell_and_a_quoted_region(tmp_path, default_csv_limit):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((20, 30), np.uint8))
    group = "g" * 200_000
    (tmp_path / "m.csv").write_text(f'image,group,region\na.tif,{group},"2,3,10,12"\n')
    (row,) = read_manifest(tmp_path / "m.csv")
    assert row.group == group and tuple(row.region) == (2, 3, 10, 12)
