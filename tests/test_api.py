"""The README's "Python API" section, executed as written, and the public names of segkit."""

import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import segkit

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_code() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 3)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the Python API section has no python example"
    return "\n".join(blocks)


def test_readme_python_api_runs(tmp_path, monkeypatch, trained):
    sample = Path(str(resources.files("segkit") / "sample"))
    for name in ("nuclei.tif", "nuclei_mask.png"):
        shutil.copy(sample / name, tmp_path / name)
    shutil.copytree(trained, tmp_path / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_api_code(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "own.csv").read_text().startswith("id,rle\nnuclei,")
    probs = namespace["probs"]
    assert probs.dtype == np.float32 and probs.shape == (1, 512, 512) and 0 <= probs.min() <= probs.max() <= 1


def test_public_names_resolve():
    for name in segkit.__all__:
        assert getattr(segkit, name) is not None
    with pytest.raises(AttributeError):
        segkit.not_a_name  # noqa: B018
