"""`spectramind doctor`: the environment, the budgets in force, the data found, and its warnings."""

import json

import pytest
import torch

from spectramind.data.prepare import source_fingerprint
from spectramind.doctor import ROOT_FILES, diagnose, render, warnings
from spectramind.pipeline import resolve

NO_GPU = not torch.cuda.is_available()


def report(tmp_path, *overrides):
    cfg, _ = resolve("doctor", [f"paths.output_dir={tmp_path / 'out'}", *overrides])
    return diagnose(cfg)


def competition_layout(root, planets=("1001", "1002"), without_fgs1=()):
    """The competition's folder shape with empty files: the doctor looks at names, not contents."""
    for name in ROOT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    for planet in planets:
        folder = root / "train" / planet
        folder.mkdir(parents=True)
        (folder / "AIRS-CH0_signal_0.parquet").write_bytes(b"PAR1")
        if planet not in without_fgs1:
            (folder / "FGS1_signal_0.parquet").write_bytes(b"PAR1")
    return root


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")
def test_kaggle_safe_without_a_gpu_is_warned_and_still_exits_zero(cli, tmp_path):
    done = cli("doctor", "trainer=kaggle_safe", f"paths.output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "warning: trainer=kaggle_safe expects a GPU" in done.stdout
    assert "gpu         none" in done.stdout
    assert "time_min=540" in done.stdout and "train time  450 min" in done.stdout


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")
def test_the_default_profile_on_a_cpu_raises_no_gpu_warning(tmp_path):
    found = report(tmp_path)
    assert found["gpus"] == [] and found["trainer"]["name"] == "defaults"
    assert not any("expects a GPU" in w for w in found["warnings"])
    assert found["trainer"]["train_time_min"] is None


def test_a_cuda_device_without_a_gpu_is_warned_only_when_torch_sees_none(tmp_path):
    found = report(tmp_path, "trainer=ci_fast", "trainer.device=cuda")
    warned = any("expects a GPU (device=cuda)" in w for w in found["warnings"])
    assert warned == NO_GPU


def test_a_gpu_smaller_than_the_memory_budget_is_warned(tmp_path):
    found = report(tmp_path, "trainer=kaggle_safe", "trainer.budgets.gpu_memory_gib=15.5")
    t4 = {"index": 0, "name": "Tesla T4", "capability": "7.5", "memory_gib": 14.58, "free_gib": 14.4}
    found["gpus"] = [t4]  # what torch reports for a Kaggle T4, whatever this machine has
    text = "\n".join(warnings(found))
    assert "GPU 0 (Tesla T4) has 14.58 GiB, less than trainer.budgets.gpu_memory_gib=15.5" in text
    assert "expects a GPU" not in text
    assert "gpu         0: Tesla T4 (sm 7.5), 14.58 GiB, 14.4 GiB free" in render(found)


def test_low_disk_against_the_budget(tmp_path):
    quiet = report(tmp_path, "trainer=ci_fast")
    assert not any(w.startswith("low disk") for w in quiet["warnings"])
    loud = report(tmp_path, "trainer=ci_fast", "trainer.budgets.min_free_disk_gib=1000000")
    assert any(w.startswith("low disk") and "min_free_disk_gib=1000000" in w for w in loud["warnings"])


def test_missing_real_data_is_warned_but_synthetic_data_is_made_on_first_use(tmp_path):
    synthetic = report(tmp_path)
    assert synthetic["data"]["root_exists"] is False
    assert not [w for w in synthetic["warnings"] if "data.root" in w]
    real = report(tmp_path, "data.name=real", f"data.root={tmp_path / 'absent'}")
    assert any(f"data.root={tmp_path / 'absent'} does not exist (data=real)" in w for w in real["warnings"])


def test_data_found_in_the_competition_layout(tmp_path):
    root = competition_layout(tmp_path / "raw")
    found = report(tmp_path, f"data.root={root}")
    assert found["data"]["train_planets"] == 2 and found["data"]["test_planets"] == 0
    assert not [w for w in found["warnings"] if "data.root" in w or "planet folders" in w]


def test_data_that_does_not_match_the_layout(tmp_path):
    root = competition_layout(tmp_path / "raw", planets=("1001", "1002", "1003"), without_fgs1=("1002",))
    (root / "wavelengths.csv").unlink()
    found = report(tmp_path, f"data.root={root}")
    text = "\n".join(found["warnings"])
    assert "lacks wavelengths.csv" in text
    assert "1 of 3 planet folders" in text and "lack an AIRS-CH0 or FGS1 signal parquet" in text


def test_a_store_calibrated_from_other_data_is_warned(tmp_path):
    root = competition_layout(tmp_path / "raw")
    store = tmp_path / "store"
    store.mkdir()
    overrides = (f"data.root={root}", f"data.store={store}")
    unfinished = report(tmp_path, *overrides)
    assert any("an unfinished calibration" in w for w in unfinished["warnings"])
    folders = ("train", "test")
    manifest = {"source_fingerprint": source_fingerprint(root, folders, None), "folders": list(folders),
                "splits": {"train": [1001], "val": [1002]}, "planets": [{"planet_id": 1001}, {"planet_id": 1002}]}
    (store / "manifest.json").write_text(json.dumps(manifest))
    current = report(tmp_path, *overrides)
    assert current["data"]["store_matches_root"] is True
    assert current["data"]["store_splits"] == {"train": 1, "val": 1}
    assert not [w for w in current["warnings"] if "data.store" in w]
    (root / "train" / "1003").mkdir()
    (root / "train" / "1003" / "AIRS-CH0_signal_0.parquet").write_bytes(b"PAR1PAR1")
    stale = report(tmp_path, *overrides)
    assert stale["data"]["store_matches_root"] is False
    assert any("calibrated from other data" in w for w in stale["warnings"])


def test_json_report(cli, tmp_path):
    done = cli("doctor", "--json", "trainer=ci_fast", f"paths.output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["trainer"]["budgets"]["time_min"] == 10
    assert found["torch"] == torch.__version__


def test_a_bad_override_is_a_config_error(cli, tmp_path):
    done = cli("doctor", "trainer.max_epochz=3", f"paths.output_dir={tmp_path}")
    assert done.returncode == 2
    assert "max_epochs" in done.stderr


def test_the_real_sample_folder_is_recognised_and_its_missing_signals_named(tmp_path, real_sample):
    found = report(tmp_path, "data.name=real", f"data.root={real_sample}")
    assert found["data"]["missing_files"] == [] and found["data"]["train_planets"] == 1
    # the sample keeps one visit's calibration maps but not its 0.5 GB of signal
    assert any("1 of 1 planet folders" in w and "/train lack" in w for w in found["warnings"])
