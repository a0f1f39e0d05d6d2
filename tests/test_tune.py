"""`segkit tune`: a 2-trial search killed mid-trial resumes from its SQLite file; bad spaces and storages."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from conftest import write_tiny_project
from segkit.cli import cli

optuna = pytest.importorskip("optuna")

SPACE = "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"


def _wait_for(predicate, process, seconds=600):
    deadline = time.time() + seconds
    while not predicate():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_two_trial_tune_resumes_after_a_kill(tmp_path):
    root = write_tiny_project(tmp_path / "p", train={"epochs": 2}, infer={"tta": "none"})
    (root / "space.yaml").write_text(SPACE)
    runs = root / "runs"
    args = ["tune", "--config", str(root / "tiny.yaml"), "--space", str(root / "space.yaml"), "--trials", "2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "segkit", *args], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        # the first trial finishes; the second one has started training: kill the search like a lost machine
        _wait_for(lambda: (runs / "tune-t001" / "run.json").exists(), process)
        assert (runs / "tune-t000" / "metrics.jsonl").read_text().count("\n") == 2
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    storage = f"sqlite:///{runs / 'optuna.db'}"
    killed = optuna.load_study(study_name="tune", storage=storage).trials[1]
    assert killed.state == optuna.trial.TrialState.RUNNING

    result = CliRunner().invoke(cli, args)  # the same command again resumes the study
    assert result.exit_code == 0, result.output
    assert "1 finished trial(s), 1 interrupted one(s) queued again" in result.output
    trials = optuna.load_study(study_name="tune", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states[:2] == ["COMPLETE", "FAIL"] and states[2] in ("COMPLETE", "PRUNED") and len(trials) == 3
    assert trials[2].params == killed.params  # the interrupted trial's parameters are tried again
    assert (runs / "tune-t002" / "config.yaml").exists()
    best_yaml = result.output.split("ready for --config:\n", 1)[1]
    best = optuna.load_study(study_name="tune", storage=storage).best_trial  # the best, not just any trial
    assert yaml.safe_load(best_yaml)["train"]["lr"] == best.params["train.lr"]


@pytest.mark.parametrize("space, message", [
    ("train.lrr: {low: 0.001, high: 0.01}\n", "space.yaml: unknown config key train.lrr (did you mean 'train.lr'?)"),
    ("train.lr: {low: 0.01, high: 0.001}\n", "space.yaml: train.lr: empty range (low 0.01 is not below high 0.001)"),
    ("model.encoder: []\n", "space.yaml: model.encoder: empty list of choices"),
    ("train.epochs: {low: 1.5, high: 3}\n", "space.yaml: config key train.epochs: expected int"),
])
def test_bad_space_is_named_before_any_trial(space, message, tmp_path, project):
    (tmp_path / "space.yaml").write_text(space)
    result = CliRunner().invoke(cli, ["tune", "--config", str(project / "tiny.yaml"), "--space",
                                      str(tmp_path / "space.yaml"), "--trials", "1",
                                      "--set", f"run.runs_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_unreachable_storage_fails_before_training(tmp_path, project):
    (tmp_path / "space.yaml").write_text(SPACE)
    result = CliRunner().invoke(cli, ["tune", "--config", str(project / "tiny.yaml"), "--space",
                                      str(tmp_path / "space.yaml"), "--trials", "1", "--set",
                                      f"run.runs_dir={tmp_path / 'runs'}", "--storage",
                                      f"sqlite:///{tmp_path}/no/such/dir/optuna.db"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --storage sqlite:///") and "cannot open the study storage" in result.output
    assert not list((tmp_path / "runs").glob("tune-*"))


def test_journal_file_storage(tmp_path):
    from segkit.tune.optuna import open_storage

    storage = open_storage(str(tmp_path / "study.log"))  # a path, not a URL: Optuna's journal file
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 2), n_trials=1)
    again = optuna.load_study(study_name="s", storage=open_storage(str(tmp_path / "study.log")))
    assert again.best_value == 1.0
