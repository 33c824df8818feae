"""The process pool under faults: a stop request, a signal to the process group, the parent's death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import group_gone

from spectramind import signals
from spectramind.data.parallel import imap_unordered, in_order
from spectramind.errors import Stopped

# Work over items of `seconds` each on two workers, under the stop-request handlers, as a data stage runs.
JOB = """
import os, sys, time
from spectramind import signals
from spectramind.data.parallel import imap_unordered
from spectramind.errors import Stopped

def slow(x):
    print("START", os.getpid(), flush=True)
    time.sleep({seconds})
    return x

if __name__ == "__main__":
    with signals.handling():
        try:
            for i, _ in imap_unordered(slow, list(range(40)), 2, "test", progress=False):
                print("ITEM", i, flush=True)
        except Stopped as e:
            print("STOPPED", e, flush=True)
"""


def _start(tmp_path, seconds: float) -> tuple[subprocess.Popen, list[int]]:
    """The job in its own process group, once both workers are busy; returns it and the workers' pids."""
    script = tmp_path / "job.py"
    script.write_text(JOB.format(seconds=seconds))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    workers: set[int] = set()
    while len(workers) < 2:
        line = proc.stdout.readline()
        assert line, proc.communicate()[1][-2000:]
        if line.startswith("START"):
            workers.add(int(line.split()[1]))
    return proc, sorted(workers)


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_stops_between_items_and_ends_the_workers(tmp_path, sig):
    proc, workers = _start(tmp_path, seconds=0.5)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[-1] == f"STOPPED received {sig.name}"
    assert len(out.splitlines()) < 40, "the work ran to the end"
    assert _gone(workers, timeout=5), "a worker outlived the stop"


def test_workers_die_with_their_parent(tmp_path):
    # Items of a minute: without the parent-death signal the workers would sleep on, parented to init.
    proc, workers = _start(tmp_path, seconds=60)
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(workers, timeout=5), "the workers outlived their parent"


def test_a_stop_request_comes_out_between_two_items_in_process():
    seen = []
    with signals.handling(), pytest.raises(Stopped, match="received SIGTERM"):
        for i, _ in imap_unordered(lambda x: x, list(range(5)), 1, "test", progress=False):
            seen.append(i)
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [0, 1]
    assert signals.requested() is None  # forgotten once the outermost handlers are gone


@pytest.mark.slow
def test_a_signal_while_the_default_set_is_simulated_stops_the_command_cleanly(tmp_path):
    # test_faults.py signals `train` in each stage that builds its data, on the small set.
    args = [sys.executable, "-m", "spectramind", "simulate", f"paths.output_dir={tmp_path}", "data.num_workers=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not (line := proc.stderr.readline()).startswith("simulate: run "):
        assert line, proc.communicate()[1][-2000:]
    time.sleep(2.0)  # into the planets
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert err.strip().splitlines()[-1] == ("simulate: stopped cleanly (received SIGTERM); nothing half-written, "
                                            "run the command again")
    index = json.loads((tmp_path / "run_hash_summary_v50.json").read_text())
    assert [(e["command"], e["status"], e.get("stop_reason")) for e in index.values()] == [
        ("simulate", "stopped", "signal")]
    assert not list((tmp_path / "data" / "synthetic").glob("raw*")), "a raw folder, whole or partial, was left"
    assert group_gone(proc.pid), "a process of the job outlived it"


def test_in_order_yields_the_results_by_index_whichever_finished_first():
    finished = [(2, "c"), (0, "a"), (3, "d"), (1, "b")]
    assert list(in_order(iter(finished))) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
