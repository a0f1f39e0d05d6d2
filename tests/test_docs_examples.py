"""Every command example in the docs runs as written: README.md and docs/**/*.md.

A fenced ```bash block is a scenario: its command lines (continuations joined, `&&` chains split)
that start with `segkit ` run in order through the real CLI, in a fresh folder, and must exit 0;
`python tools/NAME.py ...` lines run the repository's tool. Other lines (pip, venv, torchrun) are set-up
and skipped. The line before a fence may carry a marker:

    <!-- docs-test: skip REASON -->   not run (say why: GPU, several processes, ...)
    <!-- docs-test: slow REASON -->   run only with the slow tests

Training commands (train, finetune, oof, tune) get a few windows per epoch and a small share of a
classifier's rows appended as --set overrides, so a block costs seconds; everything else is as written.
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from segkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:^<!--\s*docs-test:\s*(?P<mark>skip|slow)\b(?P<why>[^>]*)-->\s*\n)?^```bash\n(?P<body>.*?)^```",
                   re.S | re.M)
TRAINING = {"train", "finetune", "oof", "tune"}
# a few windows (seg: 160 * 0.05 = 8) or rows (cls: 5 %) per epoch, a few windows for the statistics
BUDGET = ["--set", "train.windows_per_epoch=160", "--set", "train.subset=0.05", "--set", "data.stats_windows=4"]


@dataclass
class Block:
    source: str  # file:line of the fence
    commands: list  # argument lists: ["segkit", ...] or ["python", "tools/x.py", ...]
    mark: str = ""
    why: str = ""


def command_lines(body: str) -> list[list[str]]:
    """The runnable commands of a block body, split like a shell would (comments dropped)."""
    text = body.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words[:1] == ["segkit"] or words[:2] and words[0] in ("python", "python3") and \
                    len(words) > 1 and words[1].startswith("tools/"):
                commands.append(words)
    return commands


def collect(root: Path = ROOT) -> list[Block]:
    blocks = []
    for path in [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            commands = command_lines(match.group("body"))
            if commands:
                line = text.count("\n", 0, match.start("body"))
                blocks.append(Block(f"{path.relative_to(root)}:{line}", commands, match.group("mark") or "",
                                    (match.group("why") or "").strip()))
    return blocks


def _params():
    for block in collect():
        marks = [pytest.mark.slow] if block.mark == "slow" else []
        if block.mark == "skip":
            marks.append(pytest.mark.skip(reason=block.why or "marked skip in the docs"))
        yield pytest.param(block, id=block.source, marks=marks)


def _expand(words: list[str]) -> list[str]:
    """Shell globbing of the arguments that match files ({id} and other text stay as written)."""
    out = []
    for word in words:
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out += matches or [word]
    return out


def run_command(words: list[str]) -> str:
    if words[0] == "segkit":
        args = _expand(words[1:])
        if args and args[0] in TRAINING:
            args += BUDGET
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{shlex.join(words)}\n{result.output}"
        return result.output
    tool = ROOT / words[1]
    done = subprocess.run([sys.executable, str(tool), *_expand(words[2:])], capture_output=True, text=True)
    assert done.returncode == 0, f"{shlex.join(words)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("block", list(_params()))
def test_docs_example_runs_as_written(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for words in block.commands:
        run_command(words)


def test_the_collector_reads_fences_markers_and_chains(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "text\n```bash\npython3 -m venv .venv && segkit train --config sample && segkit infer --rle a.csv\n```\n"
        "```\nsegkit not-bash\n```\n")
    (tmp_path / "docs" / "a.md").write_text(
        "<!-- docs-test: skip needs a GPU -->\n```bash\nsegkit train --device cuda \\\n  --name x  # comment\n```\n"
        "```bash\npip install segkit\ntorchrun -m segkit.cli train\n```\n")
    blocks = collect(tmp_path)
    assert [b.commands for b in blocks] == [
        [["segkit", "train", "--config", "sample"], ["segkit", "infer", "--rle", "a.csv"]],
        [["segkit", "train", "--device", "cuda", "--name", "x"]],
    ]
    assert (blocks[0].mark, blocks[1].mark, blocks[1].why) == ("", "skip", "needs a GPU")
    assert collect()  # the real docs hold examples
