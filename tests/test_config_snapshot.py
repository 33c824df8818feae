"""Run folders, snapshots, the outputs index under concurrent writers, and the lifecycle logs."""

import json
import multiprocessing as mp

import yaml

from spectramind.config import runhash
from spectramind.config.stage import load, start


def _start(command, overrides):
    cfg, s = load(overrides)
    return start(command, cfg, s, overrides, "", with_torch=False)


def test_start_snapshots_config_overrides_env_and_index(tmp_path):
    overrides = [f"paths.output_dir={tmp_path}", "trainer=ci_fast"]
    stage = _start("train", overrides)
    assert stage.run_dir == tmp_path / "runs" / stage.run_hash
    assert yaml.safe_load((stage.run_dir / "config.yaml").read_text()) == stage.cfg
    assert yaml.safe_load((stage.run_dir / "overrides.yaml").read_text()) == overrides
    env = json.loads((stage.run_dir / "env.json").read_text())
    assert env["python"] and env["packages"]["hydra-core"]
    index = json.loads((tmp_path / runhash.INDEX_NAME).read_text())
    assert index[stage.run_hash]["status"] == "started"

    stage.finish("complete", wall_s=1.5)
    index = json.loads((tmp_path / runhash.INDEX_NAME).read_text())
    assert index[stage.run_hash]["status"] == "complete" and index[stage.run_hash]["wall_s"] == 1.5
    events = [json.loads(line) for line in (stage.run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "stop"]
    log = (tmp_path / "logs" / "v50_debug_log.md").read_text()
    assert f"run `{stage.run_hash}`: complete (wall_s=1.5)" in log


def test_same_inputs_find_the_same_run_folder(tmp_path):
    a = _start("train", [f"paths.output_dir={tmp_path}"])
    b = _start("train", [f"paths.output_dir={tmp_path}", "trainer.max_epochs=50"])
    assert a.run_dir == b.run_dir
    assert len(list((tmp_path / "runs").iterdir())) == 1


def _writer(output_dir, worker, n):
    for i in range(n):
        runhash.index_run(output_dir, f"{worker:02d}-{i:03d}", {"status": "complete", "worker": worker})


def test_concurrent_index_writers_lose_no_entry(tmp_path):
    workers, per_worker = 6, 25
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = json.loads((tmp_path / runhash.INDEX_NAME).read_text())
    assert len(index) == workers * per_worker
    assert not list(tmp_path.glob(".*.tmp"))


def test_dry_run_prints_hash_folder_budgets_and_writes_nothing(cli, tmp_path):
    result = cli("train", "trainer=kaggle_safe", f"paths.output_dir={tmp_path}", "--dry-run")
    assert result.returncode == 0, result.stderr
    hash_line = [ln for ln in result.stdout.splitlines() if ln.startswith("run hash: ")][0]
    run_hash = hash_line.split(": ")[1]
    assert f"run folder: {tmp_path}/runs/{run_hash}" in result.stdout
    assert "time_min=540" in result.stdout and "gpu_memory_gib=" in result.stdout
    assert yaml.safe_load(result.stdout.split("run hash: ")[0])["trainer"]["name"] == "kaggle_safe"
    hashed = cli("config", "hash", "trainer=kaggle_safe")
    assert hashed.stdout.strip() == run_hash
    assert list(tmp_path.iterdir()) == []
