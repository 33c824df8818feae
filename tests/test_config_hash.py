"""The run hash: stable under key order and defaults, sensitive to every leaf, blind to volatile fields."""

import copy

import pytest

from spectramind.config import runhash
from spectramind.config.compose import compose
from spectramind.pipeline import resolve


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 1
    if isinstance(value, list):
        return value + [0]
    return {"changed": True}


def _set(tree, path, value):
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _volatile(path):
    dotted = ".".join(map(str, path))
    return any(dotted == v or dotted.startswith(v + ".") for v in runhash.VOLATILE)


@pytest.mark.parametrize("command", sorted(runhash.SECTIONS) + ["doctor"])
def test_every_leaf_a_command_reads_changes_its_hash(command):
    cfg = compose([])
    base = runhash.run_hash(cfg, command, "", "")
    read = runhash.SECTIONS.get(command, tuple(cfg))
    leaves = [(p, v) for p, v in _leaves(cfg) if not _volatile(p)]
    assert len(leaves) > 20
    for path, value in leaves:
        other = copy.deepcopy(cfg)
        _set(other, path, _changed(value))
        changed = runhash.run_hash(other, command, "", "") != base
        assert changed == (path[0] in read), f"{command}: changing {'.'.join(path)}"


def test_volatile_fields_do_not_change_the_hash():
    cfg = compose([])
    base = runhash.run_hash(cfg, "train", "", "")
    for path in runhash.VOLATILE:
        other = copy.deepcopy(cfg)
        node = other
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if leaf in node:
            node[leaf] = "/somewhere/else" if isinstance(node[leaf], (str, dict)) else 7
            assert runhash.run_hash(other, "train", "", "") == base, path


def _reversed(tree):
    return {k: _reversed(v) if isinstance(v, dict) else v for k, v in reversed(list(tree.items()))}


def test_key_order_does_not_change_the_hash():
    cfg = compose([])
    assert list(_reversed(cfg)) != list(cfg)
    assert runhash.run_hash(_reversed(cfg), "train", "", "") == runhash.run_hash(cfg, "train", "", "")


def test_explicit_default_equals_implicit_default():
    cfg = compose([])
    explicit = [f"trainer.max_epochs={cfg['trainer']['max_epochs']}", f"seed={cfg['seed']}", "trainer=defaults"]
    assert resolve("train", explicit)[1] == resolve("train", [])[1]


def test_output_folder_override_keeps_the_hash(tmp_path):
    assert resolve("train", [f"paths.output_dir={tmp_path}"])[1] == resolve("train", [])[1]


@pytest.mark.parametrize("override", ["trainer.max_epochs=3", "seed=7", "trainer=ci_fast", "trainer.budgets.time_min=5",
                                      "model=cnn1d", "optimizer.lr=0.5"])
def test_overrides_change_the_hash(override):
    assert resolve("train", [override])[1] != resolve("train", [])[1]


def test_command_data_fingerprint_and_code_are_part_of_the_hash():
    cfg = compose([])
    base = runhash.run_hash(cfg, "train", "", "")
    assert runhash.run_hash(cfg, "predict", "", "") != base
    assert runhash.run_hash(cfg, "train", "data", "") != base
    assert runhash.run_hash(cfg, "train", "", "code") != base


def _package_copy(tmp_path):
    import shutil

    from spectramind.config import provenance

    copy_ = tmp_path / "spectramind"
    shutil.copytree(provenance.PACKAGE, copy_, ignore=shutil.ignore_patterns("__pycache__"))
    return copy_


def test_editing_the_fit_code_changes_the_stages_that_run_it_and_no_other(tmp_path):
    from spectramind.config.provenance import code_digest

    package = _package_copy(tmp_path)
    stages = ("simulate", "calibrate", "fit", "train", "predict", "evaluate")
    before = {s: code_digest(s, package) for s in stages}
    fit = package / "models" / "fit.py"
    fit.write_text(fit.read_text() + "\n# an edit\n")
    code_digest.cache_clear()
    after = {s: code_digest(s, package) for s in stages}
    assert {s for s in stages if after[s] != before[s]} == {"fit", "train", "predict", "evaluate"}


def test_every_model_the_config_can_name_is_in_the_sources_of_the_stages_that_build_it():
    from spectramind.config.provenance import stage_sources

    for stage in ("train", "predict", "evaluate"):
        assert {"models/nets.py", "models/fit.py", "losses.py", "train/optim.py"} <= set(stage_sources(stage))
    assert "models/nets.py" not in stage_sources("calibrate")


def test_code_digest_is_recorded_in_env_json(tmp_path):
    import json

    from spectramind.config.provenance import code_digest
    from spectramind.config.stage import load, start

    cfg, s = load([f"paths.output_dir={tmp_path}"])
    stage = start("train", cfg, s, [], "", with_torch=False)
    env = json.loads((stage.run_dir / "env.json").read_text())
    assert env["code"]["digest"] == code_digest("train") and env["code"]["version"]
