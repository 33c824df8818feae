"""tree_fingerprint changes with any input byte, file name or file set, and its digest cache never hands back
a stale digest for the rewrites a stat can see (new inode, same-tick rewrite) nor trusts a damaged cache."""

import json
import os
import time
import tracemalloc

import pytest
import xxhash

from spectramind import files

HOUR_NS = 3600 * 10**9


def write(path, data: bytes, age_ns: int = HOUR_NS) -> int:
    """Write `data`, set its mtime `age_ns` in the past (old enough to be cached) and return that mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_ns:
        os.utime(path, ns=(time.time_ns() - age_ns,) * 2)
    return path.stat().st_mtime_ns


def count_digests(monkeypatch) -> list:
    """Record every file whose content is read for a digest."""
    read, real = [], files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda path: read.append(path) or real(path))
    return read


def cached_entries(cache) -> dict:
    entries = files._read_cache(cache)
    assert entries is not None, "the cache on disk is not valid"
    return entries


def test_same_size_different_bytes_changes_the_fingerprint_without_a_cache(tmp_path):
    mtime = write(tmp_path / "tree/a.bin", b"aaaa")
    before = files.tree_fingerprint(tmp_path / "tree")
    write(tmp_path / "tree/a.bin", b"bbbb")
    os.utime(tmp_path / "tree/a.bin", ns=(mtime, mtime))
    assert files.tree_fingerprint(tmp_path / "tree") != before


def test_a_file_renamed_over_with_the_same_size_and_mtime_is_rehashed_through_its_new_inode(tmp_path):
    target, cache = tmp_path / "tree/a.bin", tmp_path / "cache.json"
    mtime = write(target, b"aaaa")
    before = files.tree_fingerprint(tmp_path / "tree", cache)
    assert str(target) in cached_entries(cache)
    old_inode = target.stat().st_ino
    write(tmp_path / "tree/a.bin.new", b"bbbb")
    os.replace(tmp_path / "tree/a.bin.new", target)
    os.utime(target, ns=(mtime, mtime))
    assert target.stat().st_ino != old_inode and target.stat().st_size == 4
    after = files.tree_fingerprint(tmp_path / "tree", cache)
    assert after != before
    assert after == files.tree_fingerprint(tmp_path / "tree")


def test_an_in_place_rewrite_within_the_racy_window_is_rehashed_even_with_its_mtime_restored(tmp_path):
    target, cache = tmp_path / "tree/a.bin", tmp_path / "cache.json"
    mtime = write(target, b"aaaa", age_ns=0)
    before = files.tree_fingerprint(tmp_path / "tree", cache)
    inode = target.stat().st_ino
    with open(target, "r+b") as f:
        f.write(b"bbbb")
    os.utime(target, ns=(mtime, mtime))
    assert (target.stat().st_ino, target.stat().st_size, target.stat().st_mtime_ns) == (inode, 4, mtime)
    after = files.tree_fingerprint(tmp_path / "tree", cache)
    assert after != before
    assert after == files.tree_fingerprint(tmp_path / "tree")


@pytest.mark.parametrize("use_cache", [False, True])
def test_adding_removing_or_renaming_a_file_changes_the_fingerprint(tmp_path, use_cache):
    tree, cache = tmp_path / "tree", (tmp_path / "cache.json" if use_cache else None)
    write(tree / "a.txt", b"one")
    write(tree / "sub/b.txt", b"two")
    base = files.tree_fingerprint(tree, cache)
    write(tree / "sub/c.txt", b"")
    added = files.tree_fingerprint(tree, cache)
    (tree / "sub/c.txt").unlink()
    assert files.tree_fingerprint(tree, cache) == base
    (tree / "a.txt").unlink()
    removed = files.tree_fingerprint(tree, cache)
    write(tree / "a.txt", b"one")
    (tree / "sub/b.txt").rename(tree / "b.txt")
    renamed = files.tree_fingerprint(tree, cache)
    assert len({base, added, removed, renamed}) == 4


def test_identical_trees_in_different_folders_share_a_fingerprint(tmp_path):
    cache = tmp_path / "cache.json"
    for name, age in (("x", HOUR_NS), ("y", 2 * HOUR_NS), ("z", HOUR_NS)):
        write(tmp_path / name / "a.txt", b"one", age)
        write(tmp_path / name / "sub/b.txt", b"two" if name != "z" else b"twO", age)
    x, y, z = (files.tree_fingerprint(tmp_path / name, cache) for name in "xyz")
    assert x == y != z
    assert files.tree_fingerprint(tmp_path / "x") == x


def test_an_unchanged_tree_is_not_read_again_when_the_cache_holds_it(tmp_path, monkeypatch):
    tree, cache = tmp_path / "tree", tmp_path / "cache.json"
    for i in range(3):
        write(tree / f"{i}.bin", bytes([i]) * 100)
    read = count_digests(monkeypatch)
    first = files.tree_fingerprint(tree, cache)
    assert len(read) == 3
    written = cache.stat()
    read.clear()
    assert files.tree_fingerprint(tree, cache) == first
    assert read == []
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_an_object", "wrong_digest", "other_version"])
def test_a_corrupt_or_foreign_cache_is_ignored_and_rewritten_valid(tmp_path, damage):
    tree, cache = tmp_path / "tree", tmp_path / "cache.json"
    write(tree / "a.txt", b"one")
    write(tree / "b.txt", b"two")
    expected = files.tree_fingerprint(tree)
    files.tree_fingerprint(tree, cache)
    data = json.loads(cache.read_text())
    for entry in data["entries"].values():
        entry["digest"] = "0" * 32  # stat still matches: trusting this cache would give a wrong fingerprint
    if damage == "garbage":
        cache.write_bytes(b"\x00\xff{not json")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "not_an_object":
        cache.write_text("[1, 2]")
    elif damage == "wrong_digest":
        cache.write_text(json.dumps(data))
    else:
        data.update(version=files.CACHE_VERSION + 1, digest=files._entries_digest(data["entries"]))
        cache.write_text(json.dumps(data))
    assert files.tree_fingerprint(tree, cache) == expected
    entries = cached_entries(cache)
    assert {entries[str(tree / n)]["digest"] for n in ("a.txt", "b.txt")} == {
        files.file_digest(tree / n) for n in ("a.txt", "b.txt")
    }


def test_a_missing_root_is_absent(tmp_path):
    assert files.tree_fingerprint(tmp_path / "nowhere") == "absent"
    assert files.tree_fingerprint(tmp_path / "nowhere", tmp_path / "cache.json") == "absent"
    assert files.tree_fingerprint(tmp_path) != "absent"


def test_a_single_file_root_hashes_its_content_and_name(tmp_path):
    write(tmp_path / "a.bin", b"same")
    write(tmp_path / "b.bin", b"same")
    a = files.tree_fingerprint(tmp_path / "a.bin")
    assert a != files.tree_fingerprint(tmp_path / "b.bin")
    write(tmp_path / "a.bin", b"diff")
    assert files.tree_fingerprint(tmp_path / "a.bin") != a


def test_symlinked_files_are_hashed_by_their_target_content(tmp_path):
    write(tmp_path / "target.bin", b"aaaa")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked/a.bin").symlink_to(tmp_path / "target.bin")
    write(tmp_path / "plain/a.bin", b"aaaa")
    linked = files.tree_fingerprint(tmp_path / "linked", tmp_path / "cache.json")
    assert linked == files.tree_fingerprint(tmp_path / "plain")
    write(tmp_path / "target.bin", b"bbbb")
    assert files.tree_fingerprint(tmp_path / "linked", tmp_path / "cache.json") != linked


def test_a_large_file_is_hashed_in_chunks_not_held_in_memory(tmp_path, monkeypatch):
    data = os.urandom(16 << 20)
    write(tmp_path / "big.bin", data)
    monkeypatch.setattr(files, "CHUNK", 1 << 20)
    tracemalloc.start()
    try:
        digest = files.file_digest(tmp_path / "big.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert peak < 4 << 20


def test_a_writer_that_finishes_meanwhile_keeps_its_entries(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    write(tmp_path / "a/one.txt", b"one")
    write(tmp_path / "b/two.txt", b"two")
    real, interleaved = files.file_digest, []

    def digest_while_another_process_writes(path):
        if not interleaved:
            interleaved.append(path)  # before the nested call, which digests through here too
            files.tree_fingerprint(tmp_path / "a", cache)
        return real(path)

    monkeypatch.setattr(files, "file_digest", digest_while_another_process_writes)
    files.tree_fingerprint(tmp_path / "b", cache)
    assert interleaved, "the other writer never ran"
    assert {str(tmp_path / "a/one.txt"), str(tmp_path / "b/two.txt")} <= set(cached_entries(cache))


def test_entries_for_removed_files_are_dropped_from_the_cache(tmp_path):
    cache = tmp_path / "cache.json"
    write(tmp_path / "tree/a.txt", b"one")
    write(tmp_path / "tree/b.txt", b"two")
    files.tree_fingerprint(tmp_path / "tree", cache)
    (tmp_path / "tree/b.txt").unlink()
    files.tree_fingerprint(tmp_path / "tree", cache)
    assert set(cached_entries(cache)) == {str(tmp_path / "tree/a.txt")}


def test_a_cache_inside_the_root_is_refused(tmp_path):
    write(tmp_path / "a.txt", b"one")
    with pytest.raises(ValueError, match="inside"):
        files.tree_fingerprint(tmp_path, tmp_path / ".cache/fingerprint.json")
