"""The leaderboard rebuilt from fabricated run folders: order, columns, failures, links, plots, sorting."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from spectramind.report.leaderboard import HTML, MARKDOWN, PLOTS_DIR, build, collect, swept

# (run hash, overrides, score, gll): three evaluated runs of a sweep over lr and fft.
RUNS = [
    ("aaaa000000000001", ["trainer=ablation", "optimizer.lr=0.001", "loss.fft=true"], 0.61, -2.5),
    ("aaaa000000000002", ["trainer=ablation", "optimizer.lr=0.003", "loss.fft=true"], 0.74, -1.5),
    ("aaaa000000000003", ["trainer=ablation", "optimizer.lr=0.01", "loss.fft=false"], 0.52, -3.5),
]
CRASHED = ("aaaa000000000004", ["trainer=ablation", "optimizer.lr=10", "loss.fft=false"])


def fabricate(out: Path, hash_: str, overrides: list[str], command: str = "train", summary=None,
              metrics=None, stop=None) -> Path:
    folder = out / "runs" / hash_
    folder.mkdir(parents=True)
    (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    events = [{"event": "start", "command": command, "run_hash": hash_}]
    events += [{"event": "stop", **stop}] if stop else []
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:  # an evaluate run of its own, found through the run index
        from spectramind.config.runhash import index_run

        evaluation = out / "runs" / ("e" + hash_[1:])
        evaluation.mkdir(parents=True)
        (evaluation / "metrics.json").write_text(json.dumps(metrics))
        index_run(out, evaluation.name, {"command": "evaluate", "status": "complete", "evaluated_run": hash_})
    return folder


@pytest.fixture
def outputs(tmp_path) -> Path:
    for i, (hash_, overrides, score, gll) in enumerate(RUNS):
        fabricate(tmp_path, hash_, overrides,
                  summary={"status": "complete", "stop_reason": "max_epochs", "epochs": 2,
                           "wall_time_s": 10.0 + i, "peak_host_gib": 1.5 - i / 10, "peak_gpu_gib": 0.0,
                           "best_metric": {"monitor": "val/loss", "value": 1.0 + i, "epoch": 2}},
                  metrics={"score": score, "gll": gll, "rmse": 1e-4 * (i + 1), "within_1sigma": 0.6,
                           "within_2sigma": 0.9})
    fabricate(tmp_path, CRASHED[0], CRASHED[1],
              stop={"status": "failed", "error": "loss is NaN at step 3 | stopped"})
    fabricate(tmp_path, "bbbb000000000001", ["run=aaaa000000000001"], command="evaluate",
              stop={"status": "complete"})
    record = tmp_path / "ablation" / "0123" / "sweep.json"
    record.parent.mkdir(parents=True)
    refused = {"index": 4, "run_hash": None, "status": "failed",
               "overrides": ["trainer=ablation", "optimizer.lr=-1", "loss.fft=true"],
               "error": "optimizer.lr: expected a value > 0, got -1"}
    record.write_text(json.dumps({"points": [refused]}))
    return tmp_path


def test_rows_best_score_first_failures_last_other_commands_left_out(outputs):
    rows = collect(outputs)
    assert [r["run_hash"] for r in rows[:3]] == ["aaaa000000000002", "aaaa000000000001", "aaaa000000000003"]
    assert [r["best"] for r in rows] == [True, False, False, False, False]
    failed = rows[3:]
    assert {r["status"] for r in failed} == {"failed"}
    assert {r["error"] for r in failed} == {"loss is NaN at step 3 | stopped",
                                            "optimizer.lr: expected a value > 0, got -1"}
    assert rows[0]["wall_time_s"] == 11.0 and rows[0]["best_val"] == 2.0
    assert swept(rows) == ["loss.fft", "optimizer.lr"]  # trainer=ablation is the same everywhere


def test_markdown_table_and_plots(outputs):
    done = build(outputs)
    assert done["rows"] == 5
    lines = (outputs / MARKDOWN).read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| rank")]
    assert len(table) == 5
    assert "[aaaa000000000002](runs/aaaa000000000002/)" in table[0] and "★" in table[0]
    assert "0.7400" in table[0] and "0.003" in table[0]
    head = next(line for line in lines if line.startswith("| rank"))
    cells = re.split(r"(?<!\\)\|", head)[1:-1]  # escaped pipes in |z|<1 keep the column count
    assert len(cells) == len(re.split(r"(?<!\\)\|", table[0])[1:-1])
    assert "loss is NaN at step 3 \\| stopped" in "\n".join(table[3:])
    plots = sorted(p.name for p in (outputs / PLOTS_DIR).glob("*.png"))
    assert plots == ["score_vs_loss.fft.png", "score_vs_optimizer.lr.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (outputs / PLOTS_DIR).glob("*.png"))


class Table(HTMLParser):
    """Headers, rows (class, run, cell texts) and the page's external references."""

    def __init__(self):
        super().__init__()
        self.heads, self.rows, self.external, self.scripts, self.links, self.images = [], [], [], [], [], []
        self._cell = None
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" or not (attrs.get("src") or "data:").startswith("data:"):
            self.external.append(attrs)
        if tag == "img":
            self.images.append(attrs["alt"])
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag == "tr" and "data-run" in attrs:
            self.rows.append({"class": attrs.get("class"), "run": attrs["data-run"], "cells": []})
        if tag in ("th", "td"):
            self._cell = ""
        if tag == "a":
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "th":
            self.heads.append(self._cell)
        if tag == "td":
            self.rows[-1]["cells"].append(self._cell)
        if tag in ("th", "td"):
            self._cell = None
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_script:
            self.scripts[-1] += data


def test_html_is_one_self_contained_table(outputs):
    build(outputs)
    page = Table()
    page.feed((outputs / HTML).read_text())
    assert page.external == []
    assert page.images == ["score_vs_loss.fft", "score_vs_optimizer.lr"]  # inlined, not linked
    assert page.heads[:3] == ["rank", "run", "status"]
    assert {"score", "GLL", "RMSE mu", "|z|<1", "|z|<2", "wall s", "host GiB", "GPU GiB"} <= set(page.heads)
    assert page.heads[-3:] == ["loss.fft", "optimizer.lr", "error"]
    assert [r["class"] for r in page.rows] == ["best", "", "", "failed", "failed"]
    assert page.rows[0]["run"] == "aaaa000000000002"
    assert all((outputs / href).is_dir() for href in page.links) and len(page.links) == 4
    assert "optimizer.lr: expected a value > 0, got -1" in {r["cells"][-1] for r in page.rows}
    assert len(page.scripts) == 1 and "addEventListener(\"click\"" in page.scripts[0]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Clicks headers in the page, noting the row order (run hashes) after each click in <pre id="probe">.
PROBE = """<script>
const orders = [];
for (const name of %s) {
  Array.from(document.querySelectorAll("th")).find(h => h.textContent === name).click();
  orders.push(Array.from(document.querySelectorAll("tbody tr")).map(r => r.dataset.run));
}
const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(orders);
document.body.appendChild(pre);
</script>"""


def _click_in_browser(page: Path, headers: list[str], tmp: Path) -> list[list[str]]:
    """Click the headers in turn in headless Chromium; the row order after each click."""
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE % json.dumps(headers) + "</body>"))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1))


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine")
def test_clicking_a_header_sorts_in_headless_chromium(outputs, tmp_path):
    build(outputs)
    gll_up, gll_down, lr_up = _click_in_browser(outputs / HTML, ["GLL", "GLL", "optimizer.lr"], tmp_path)
    # GLL ascending: -3.5, -2.5, -1.5, then the two failed rows (no GLL) last; a second click reverses.
    assert gll_up[:3] == ["aaaa000000000003", "aaaa000000000001", "aaaa000000000002"]
    assert gll_down[:3] == ["aaaa000000000002", "aaaa000000000001", "aaaa000000000003"]
    assert set(gll_up[3:]) == set(gll_down[3:]) == {"aaaa000000000004", ""}
    # A swept parameter sorts as numbers: the refused lr=-1 first, then 0.001 < 0.003 < 0.01 < 10.
    assert lr_up == ["", "aaaa000000000001", "aaaa000000000002", "aaaa000000000003", "aaaa000000000004"]


def test_report_command_rebuilds_from_run_folders(outputs, cli):
    result = cli("report", f"paths.output_dir={outputs}")
    assert result.returncode == 0, result.stderr
    assert "5 runs" in result.stdout
    assert (outputs / HTML).is_file() and (outputs / MARKDOWN).is_file()
