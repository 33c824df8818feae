"""The logger group: each backend's option, several at once, a missing package refused up front, and each
backend's files read back after a real (toy) training run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest
from test_train_fixtures import ToyDataset, ToyModel, adam, gll, trainer_cfg

from spectramind.config import settings as st
from spectramind.config.compose import compose, config_dir
from spectramind.config.runhash import run_hash
from spectramind.config.schema import root_schema
from spectramind.errors import ConfigError
from spectramind.train import metrics
from spectramind.train.trainer import fit

BACKENDS = ("jsonl", "tensorboard", "dvclive", "mlflow", "wandb")
RUN_HASH = "0123456789abcdef"


def test_each_option_is_one_backend_and_several_compose_together():
    schema = root_schema()["properties"]["logger"]
    options = sorted(p.stem for p in (config_dir() / "logger").glob("*.yaml"))
    assert options == sorted(BACKENDS)
    for option in options:
        chosen = compose([f"logger={option}"])["logger"]
        assert list(chosen) == [option]
        cls = type(getattr(st.build(compose([f"logger={option}"])).logger, option))
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(chosen[option]) == fields == set(schema["properties"][option]["properties"]), option
        assert set(schema["properties"][option]["required"]) == fields, option
    assert list(compose([])["logger"]) == ["jsonl"]  # the default
    both = st.build(compose(["logger=[jsonl,tensorboard]"])).logger
    assert both.jsonl is not None and both.tensorboard is not None and both.wandb is None
    assert st.build(compose(["logger=[]"])).logger == st.Logger(None, None, None, None, None)


def test_the_logger_and_the_progress_interval_leave_the_run_hash_alone():
    base = compose([])
    for change in (["logger=[jsonl,tensorboard,wandb]"], ["trainer.log_every_s=0.5", "log_every_s=2"]):
        assert run_hash(compose(change), "train", "", "") == run_hash(base, "train", "", "")


def test_a_bad_backend_option_is_one_config_line():
    from spectramind.config.stage import load

    with pytest.raises(ConfigError, match="logger.wandb.mode: expected one of 'offline', 'online', 'disabled'"):
        load(["logger=wandb", "logger.wandb.mode=cloud"])
    with pytest.raises(ConfigError, match="expected one of: dvclive, jsonl, mlflow, tensorboard, wandb"):
        load(["logger=[jsonl,neptune]"])


def test_a_chosen_backend_whose_package_is_missing_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    chosen = st.build(compose(["logger=[jsonl,wandb]"])).logger
    with pytest.raises(ConfigError, match=r"logger: wandb needs the wandb package.*pip install 'spectramind\[wandb\]'"):
        metrics.check(chosen)
    metrics.check(st.build(compose(["logger=jsonl"])).logger)  # the default needs nothing


class Recorder:
    def __init__(self, fail_close: bool = False):
        self.records, self.closed, self.fail_close = [], False, fail_close

    def log_metrics(self, values: dict, step: int) -> None:
        self.records.append((step, values))

    def close(self) -> None:
        self.closed = True
        if self.fail_close:
            raise OSError("disk full")


def test_every_backend_gets_each_record_and_all_are_closed_when_one_fails():
    a, b = Recorder(fail_close=True), Recorder()
    log = metrics.MetricsLog([a, b])
    log.log({"step": 3, "train/loss": 0.5, "epoch": 0})
    assert a.records == b.records == [(3, {"train/loss": 0.5, "epoch": 0})]
    with pytest.raises(OSError, match="disk full"):
        log.close()
    assert a.closed and b.closed


def test_jsonl_keeps_a_non_finite_loss_the_plotting_backends_drop_it(tmp_path):
    jsonl = metrics.JsonLines(tmp_path / "metrics.jsonl")
    jsonl.log_metrics({"train/loss": math.nan, "lr": 0.1}, 4)
    assert "NaN" in (tmp_path / "metrics.jsonl").read_text()
    assert metrics._scalars({"train/loss": math.nan, "lr": 0.1, "epoch": 2, "flag": True}) == {"lr": 0.1, "epoch": 2.0}


def _train(tmp_path, *names: str) -> tuple[dict, list[dict]]:
    """A toy run logging to `names`; its summary and its metrics.jsonl records (jsonl is always among them)."""
    chosen = st.build(compose([f"logger=[jsonl,{','.join(names)}]"])).logger
    run_dir = tmp_path / "run"
    summary = fit(ToyModel(), gll, ToyDataset(32), ToyDataset(8, seed=1), trainer_cfg(max_epochs=2), run_dir=run_dir,
                  optimizer=adam(), run_hash=RUN_HASH, loggers=metrics.build(chosen, run_dir, RUN_HASH))
    return summary, metrics.read(run_dir / "metrics.jsonl")


def _losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def _same_curve(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


@pytest.mark.slow
def test_tensorboard_and_dvclive_hold_the_same_curves_as_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("dvclive")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, records = _train(tmp_path, "tensorboard", "dvclive")
    assert summary["global_step"] == 8 and len(_losses(records)) == 8
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    board = [(e.step, e.value) for e in events.Scalars("train/loss")]
    _same_curve(board, _losses(records))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8]

    live = tmp_path / "run" / "dvclive"
    rows = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss" and len(rows) == 1 + 8
    assert [int(r.split("\t")[0]) for r in rows[1:]] == [s for s, _ in _losses(records)]
    latest = json.loads((live / "metrics.json").read_text())
    assert latest["val"]["loss"] == pytest.approx(records[-1]["val/loss"])
    assert not (live / "dvc.yaml").exists()  # a stage file inside a DVC output would break `dvc repro`



def test_a_fixed_dvclive_folder_holds_the_latest_run_and_a_resumed_run_appends_to_its_own(tmp_path):
    pytest.importorskip("dvclive")
    chosen = st.build(compose(["logger=[dvclive]", f"logger.dvclive.dir={tmp_path / 'live'}"])).logger

    def log(run_hash: str, steps: range) -> list[int]:
        (backend,) = metrics.build(chosen, tmp_path / run_hash, run_hash)
        for step in steps:
            backend.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
        backend.close()
        rows = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
        return [int(r.split("\t")[0]) for r in rows]

    assert log("aaaa", range(0, 3)) == [0, 1, 2]
    assert log("aaaa", range(3, 5)) == [0, 1, 2, 3, 4]  # the same run, resumed: its curve goes on
    assert log("bbbb", range(0, 2)) == [0, 1]           # another run: the folder is its alone
    assert not (tmp_path / "bbbb" / "dvclive").exists()
    assert "bbbb" in (tmp_path / "live" / "params.yaml").read_text()

@pytest.mark.slow
def test_mlflow_files_one_run_in_the_run_folder_and_a_resumed_run_goes_on_in_it(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    _, records = _train(tmp_path, "mlflow")
    client = MlflowClient((tmp_path / "run" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("spectramind")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN_HASH and run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    _same_curve(sorted(history), _losses(records))

    again = metrics.Mlflow(st.MlflowLog("spectramind", None), tmp_path / "run", RUN_HASH)
    again.log_metrics({"val/loss": 0.25}, 9)
    again.close()
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert client.get_metric_history(run.info.run_id, "val/loss")[-1].step == 9


@pytest.mark.slow
def test_wandb_offline_writes_its_run_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(tmp_path, "wandb")
    (offline,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{RUN_HASH}")
    data = (offline / f"run-{RUN_HASH}.wandb").read_bytes()
    assert b"train/loss" in data and b"val/loss" in data
