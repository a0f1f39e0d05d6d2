"""evaluate for class predictions: scores from segkit.metrics.cls, confidently wrong rows, report."""

import re

import pytest

from segkit.ground.errors import SegkitError
from segkit.report.cls_report import evaluate_classes, read_class_csv, render_cls_report


def test_class_scores_and_confidently_wrong(tmp_path):
    (tmp_path / "pred.csv").write_text("id,label,cat,dog,owl\n"
                                       "a,cat,0.9,0.05,0.05\nb,dog,0.2,0.7,0.1\nc,dog,0.1,0.85,0.05\n"
                                       "d,owl,0.3,0.3,0.4\nz,cat,1,0,0\n")
    truth = {"a": "cat", "b": "dog", "c": "cat", "d": "cat", "e": "owl"}
    evaluation = evaluate_classes(read_class_csv(tmp_path / "pred.csv", "--pred"), truth,
                                  class_names=["cat", "dog", "owl"])
    rep = evaluation.report
    assert rep["accuracy"] == pytest.approx(2 / 4)
    assert rep["confusion"] == [[1, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert rep["per_class"]["cat"]["recall"] == pytest.approx(1 / 3)
    assert rep["per_class"]["dog"]["precision"] == pytest.approx(1 / 2)
    assert [w[0] for w in evaluation.wrong] == ["c", "d"]  # c wrong at p=0.85 before d at 0.4
    assert any("1 labelled row(s) have no prediction" in n for n in evaluation.notes)
    assert any("1 row(s) without labels were skipped" in n for n in evaluation.notes)
    text = render_cls_report(evaluation, thumbnail=lambda image_id: None)
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1  # the confusion matrix


def test_unknown_class_is_named(tmp_path):
    (tmp_path / "pred.csv").write_text("id,label\na,cat\nb,emu\n")
    with pytest.raises(SegkitError, match="class\\(es\\) emu not in the class names"):
        evaluate_classes(read_class_csv(tmp_path / "pred.csv", "--pred"), {"a": "cat", "b": "dog"},
                         class_names=["cat", "dog"])


def test_cls_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from segkit.cli import cli

    (tmp_path / "pred.csv").write_text("id,label,p0,p1\na,0,0.9,0.1\nb,1,0.2,0.8\nc,1,0.4,0.6\n")
    (tmp_path / "truth.csv").write_text("id,label\na,0\nb,1\nc,0\n")
    result = CliRunner().invoke(cli, ["evaluate", "--task", "cls", "--pred", str(tmp_path / "pred.csv"),
                                      "--truth", str(tmp_path / "truth.csv"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "accuracy 0.6667" in result.output
    text = (tmp_path / "r.html").read_text()
    assert "The 1 most confidently wrong" in text and "c: true 0, predicted 1 (p=0.600)" in text


@pytest.mark.parametrize("args, message", [
    (["--pred", "{tmp}/missing.csv", "--truth", "{tmp}/truth.csv"], "missing.csv: cannot read --pred"),
    (["--pred", "{tmp}/pred.csv", "--truth", "{tmp}/nope.csv"], "nope.csv: cannot read --truth"),
    (["--pred", "{tmp}/pred.csv", "--truth", "{tmp}/truth.csv", "--search"], "--search: needs --run RUN"),
])
def test_cls_bad_inputs_are_one_line_and_write_nothing(args, message, tmp_path):
    from click.testing import CliRunner

    from segkit.cli import cli

    (tmp_path / "pred.csv").write_text("id,label\na,0\n")
    (tmp_path / "truth.csv").write_text("id,label\na,0\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["evaluate", "--task", "cls", *[a.format(tmp=tmp_path) for a in args],
                                      "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no temporary file
