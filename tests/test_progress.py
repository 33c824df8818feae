"""Progress without a terminal: a plain line every log_every_s seconds (train, calibrate, fit, predict); on a
terminal, the rich bar with the loss and the ETA."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import types

import pytest
from test_train_fixtures import toy_script

from spectramind import progress

FIELDS = ("epoch ", "loss ", "lr ", "samples/s ", "peak mem host ", "steps/s", "ETA ")


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_plain_lines_come_every_interval_and_once_at_the_end(clock, capsys):
    bar = progress.ProgressBar(every_s=10)
    bar.start("fit", 40, unit="visits")
    for _ in range(4):  # 4 visits in 8 s: not yet an interval
        clock[0] += 2
        bar.advance(loss=0.5)
    assert capsys.readouterr().err == ""
    clock[0] += 2
    bar.advance()
    line = capsys.readouterr().err
    assert line == "fit: 5/40 visits (12%), loss 0.5, 0.5 visits/s, elapsed 0:00:10, ETA 0:01:10\n"
    clock[0] += 1
    bar.advance(4, loss=0.25)  # the newest fields replace the old ones
    assert capsys.readouterr().err == ""
    bar.close()
    assert capsys.readouterr().err.startswith("fit: 9/40 visits (22%), loss 0.25, ")


def test_no_lines_unless_an_interval_is_set_or_when_disabled(clock, capsys):
    for bar in (progress.ProgressBar(), progress.ProgressBar(enabled=False, every_s=1)):
        bar.start("x", 3)
        clock[0] += 5
        bar.advance()
        bar.close()
    assert capsys.readouterr().err == ""


def test_the_command_line_sets_the_interval_of_every_bar(clock, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_every_s", None)
    progress.configure(1.0)
    with progress.bar("predict", 2) as advance:
        clock[0] += 1
        advance()
        advance()
    assert capsys.readouterr().err.splitlines() == [
        "predict: 1/2 (50%), 1/s, elapsed 0:00:01, ETA 0:00:01",
        "predict: 2/2 (100%), 2/s, elapsed 0:00:01, ETA 0:00:00",
    ]


TRAIN = """
import time, torch
from test_train_fixtures import ToyDataset, ToyModel, adam, gll, trainer_cfg
from spectramind.train.trainer import fit

class Slow(ToyModel):
    def forward(self, batch):
        time.sleep(0.02)
        return super().forward(batch)

fit(Slow(), gll, ToyDataset(96), None, trainer_cfg(max_epochs=2, batch_size=4, progress_bar=True, log_every_s=0.1),
    run_dir={run_dir!r}, optimizer=adam())
"""


def _train_script(tmp_path) -> list[str]:
    script = tmp_path / "train.py"
    script.write_text(toy_script(TRAIN.format(run_dir=str(tmp_path / "run"))))
    return [sys.executable, str(script)]


@pytest.mark.slow
def test_training_with_stderr_a_pipe_writes_a_line_every_interval(tmp_path):
    done = subprocess.run(_train_script(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("train: ")]
    assert len(lines) >= 4, done.stderr  # 48 steps of >= 20 ms, a line every 0.1 s
    for line in lines:
        assert re.match(r"train: \d+/48 steps \(\d+%\), ", line), line
        for field in FIELDS:
            assert field in line, (field, line)
    assert lines[-1].startswith("train: 48/48 steps (100%), epoch 2/2, ")
    assert "\x1b[" not in done.stderr  # no terminal codes in a log


@pytest.mark.slow
def test_on_a_terminal_the_bar_shows_the_loss_and_the_eta(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_train_script(tmp_path), stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=60) == 0, shown[-2000:]
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", shown.decode(errors="replace"))
    assert re.search(r"train .*\d+/48 .*epoch \d/2, loss [\d.]+, lr ", text), text[-2000:]
    assert re.search(r"\d:\d\d:\d\d", text)  # rich's time remaining
    assert not re.search(r"^train: ", text, re.M)  # no plain lines on a terminal


@pytest.mark.slow
def test_calibrate_fit_and_predict_write_plain_lines_through_the_command_line(cli, tmp_path):
    small = ["data.simulate.n_train=2", "data.simulate.n_test=1", "data.simulate.airs_reads=60",
             "data.simulate.fgs1_reads=240", "data.num_workers=0", f"paths.output_dir={tmp_path}", "log_every_s=0.1"]
    assert cli("simulate", *small, cwd=tmp_path).returncode == 0
    done = {stage: cli(*args, *small, cwd=tmp_path) for stage, args in
            (("calibrate", ["calibrate"]), ("fit", ["fit"]), ("predict", ["predict", "model=fit"]))}
    for stage, unit in (("calibrate", " visits"), ("fit", " visits"), ("predict", "")):
        assert done[stage].returncode == 0, done[stage].stderr
        lines = [line for line in done[stage].stderr.splitlines() if line.startswith(f"{stage}: ") and "ETA" in line]
        assert lines, done[stage].stderr
        assert re.fullmatch(rf"{stage}: (\d+)/\1{unit} \(100%\), [\d.]+{unit}/s, elapsed \d:\d\d:\d\d, ETA 0:00:00",
                            lines[-1]), lines
