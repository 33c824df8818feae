"""The run hash: stable under key order and defaults, sensitive to every leaf, blind to volatile fields."""

import copy

import pytest

from spectramind.config import runhash
from spectramind.config.compose import compose
from spectramind.config.stage import resolve


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
    base = runhash.run_hash(cfg, command)
    read = runhash.SECTIONS.get(command, tuple(cfg))
    leaves = [(p, v) for p, v in _leaves(cfg) if not _volatile(p)]
    assert len(leaves) > 20
    for path, value in leaves:
        other = copy.deepcopy(cfg)
        _set(other, path, _changed(value))
        changed = runhash.run_hash(other, command) != base
        assert changed == (path[0] in read), f"{command}: changing {'.'.join(path)}"


def test_volatile_fields_do_not_change_the_hash():
    cfg = compose([])
    base = runhash.run_hash(cfg, "train")
    for path in runhash.VOLATILE:
        other = copy.deepcopy(cfg)
        node = other
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if leaf in node:
            node[leaf] = "/somewhere/else" if isinstance(node[leaf], (str, dict)) else 7
            assert runhash.run_hash(other, "train") == base, path


def _reversed(tree):
    return {k: _reversed(v) if isinstance(v, dict) else v for k, v in reversed(list(tree.items()))}


def test_key_order_does_not_change_the_hash():
    cfg = compose([])
    assert list(_reversed(cfg)) != list(cfg)
    assert runhash.run_hash(_reversed(cfg), "train") == runhash.run_hash(cfg, "train")


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


def test_command_and_data_fingerprint_are_part_of_the_hash(tmp_path):
    cfg = compose([])
    assert runhash.run_hash(cfg, "train") != runhash.run_hash(cfg, "predict")
    empty = runhash.folder_fingerprint(tmp_path)
    (tmp_path / "a.parquet").write_bytes(b"123")
    assert runhash.folder_fingerprint(tmp_path) != empty
    assert runhash.folder_fingerprint(tmp_path / "missing") == "absent"
