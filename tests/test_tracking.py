"""--log mlflow: a real training run written to a SQLite store and read back with MLflow's own client."""

import json

import pytest
from click.testing import CliRunner

from conftest import write_tiny_project
from segkit.cli import cli

mlflow = pytest.importorskip("mlflow")


def test_mlflow_round_trip(tmp_path):
    root = write_tiny_project(tmp_path / "p", train={"epochs": 1})
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "m1", "--log", "mlflow"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"  # the default: a SQLite file in the runs folder
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("segkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "m1" and run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((root / "runs" / "m1" / "run.json").read_text())["tracking_run_id"]
    assert run.data.params["train.lr"] == "0.003" and run.data.params["data.fov_px"] == "48"
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [1]
    assert 0 <= history[0].value <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "run.json", "preprocess.json", "plots"} <= artifacts
    assert run.data.tags["best_checkpoint"].endswith("epoch_0001.pt")
    assert not (tmp_path / "mlruns").exists()  # nothing written beside the working folder


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:9", "tracking URI http://127.0.0.1:9: cannot reach the MLflow store"),
    ("sqlite:///{tmp}/missing/mlflow.db", "does not exist"),
])
def test_unreachable_tracking_uri_fails_before_training(uri, message, tmp_path):
    root = write_tiny_project(tmp_path / "p", train={"epochs": 1})
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "bad", "--log", "mlflow",
                                      "--tracking-uri", uri.format(tmp=tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (root / "runs" / "bad").exists()


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch):
    """Ctrl-C in epoch 2, then `train --resume`: one MLflow run, with epochs 1 and 2, finished."""
    import segkit.train.fit as fit_module

    real = fit_module.train_one_epoch

    def interrupted(model, loader, *args, **kwargs):
        if loader.dataset.epoch == 2:
            raise KeyboardInterrupt
        return real(model, loader, *args, **kwargs)

    root = write_tiny_project(tmp_path / "p", train={"epochs": 2})
    monkeypatch.setattr(fit_module, "train_one_epoch", interrupted)
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "r", "--log", "mlflow"])
    assert result.exit_code == 130, result.output
    client = mlflow.MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])
    assert first.info.status == "KILLED"
    monkeypatch.setattr(fit_module, "train_one_epoch", real)
    result = CliRunner().invoke(cli, ["train", "--resume", str(root / "runs" / "r")])
    assert result.exit_code == 0, result.output
    (run,) = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2]
