"""Atomic writes leave the previous good file on failure; tolerant JSON reads skip what is not there."""

import os
import stat

import pytest

from spectramind import files


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    files.write_json(target, {"status": "complete"})
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("killed mid-write")
    assert files.read_json(target) == {"status": "complete"}
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_read_json_gives_an_empty_object_for_missing_corrupt_or_non_object_files(tmp_path):
    (tmp_path / "corrupt.json").write_text("{half")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name in ("missing.json", "corrupt.json", "list.json"):
        assert files.read_json(tmp_path / name) == {}
