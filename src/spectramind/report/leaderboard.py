"""The ablation leaderboard, rebuilt from the run folders alone: Markdown, sortable HTML, score plots.

Every train run under `outputs/runs/` is a row: its overrides (`overrides.yaml`), its outcome
(`summary.json`, else the last `stop` event) and its evaluation (`metrics.json`). Points that never got
a run folder (a config the schema refused) come from the sweep records under `outputs/ablation/`.
The swept parameters are the override keys whose values differ between rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from spectramind import files
from spectramind.report.ablate import SWEEP_RECORD, SWEEPS_DIR

MARKDOWN = "ablation_leaderboard.md"
HTML = "ablation_leaderboard.html"
PLOTS_DIR = Path("diagnostics") / "ablation"

# (row key, column title, format): the measured columns, in table order.
METRICS = [
    ("score", "score", "{:.4f}"),
    ("gll", "GLL", "{:.4g}"),
    ("rmse", "RMSE mu", "{:.3g}"),
    ("within_1sigma", "|z|<1", "{:.3f}"),
    ("within_2sigma", "|z|<2", "{:.3f}"),
    ("best_val", "best val", "{:.4g}"),
    ("wall_time_s", "wall s", "{:.1f}"),
    ("peak_host_gib", "host GiB", "{:.2f}"),
    ("peak_gpu_gib", "GPU GiB", "{:.2f}"),
]


def _events(folder: Path) -> list[dict]:
    try:
        lines = (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}; paths and launcher settings are not parameters."""
    params = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if not key.startswith(("paths.", "hydra")):
            params[key] = value
    return params


def run_row(folder: Path, evaluation: Path | None = None) -> dict | None:
    """One train run folder as a leaderboard row (None for other commands' folders), scored by the
    folder of its newest evaluate run (found through the run index)."""
    import yaml

    events = _events(folder)
    start = next((e for e in events if e.get("event") == "start"), {})
    if start.get("command") != "train":
        return None
    stop = next((e for e in reversed(events) if e.get("event") == "stop"), {})
    summary = files.read_json(folder / "summary.json") or stop
    metrics = files.read_json(evaluation / "metrics.json") if evaluation else {}
    overrides = yaml.safe_load((folder / "overrides.yaml").read_text(encoding="utf-8")) or []
    row = {"run_hash": folder.name, "link": f"runs/{folder.name}/", "params": parse_overrides(overrides),
           "status": summary.get("status", "running"), "error": summary.get("error"),
           "stop_reason": summary.get("stop_reason"), "epochs": summary.get("epochs")}
    row.update({key: summary.get(key) for key in ("wall_time_s", "peak_host_gib", "peak_gpu_gib")})
    row["best_val"] = (summary.get("best_metric") or {}).get("value")  # the trainer's monitored metric
    row.update({key: metrics.get(key) for key in ("score", "gll", "rmse", "within_1sigma", "within_2sigma")})
    return row


def folderless_rows(output_dir: Path) -> list[dict]:
    """Sweep points that failed before any run folder existed (a config the schema refused)."""
    rows = {}
    for record in sorted((output_dir / SWEEPS_DIR).glob(f"*/{SWEEP_RECORD}")):
        for point in files.read_json(record).get("points", []):
            hash_ = point.get("run_hash")
            if point.get("status") == "failed" and not (hash_ and (output_dir / "runs" / hash_).is_dir()):
                params = parse_overrides(point["overrides"])
                rows[json.dumps(params, sort_keys=True)] = {
                    "run_hash": hash_, "link": None, "params": params, "status": "failed",
                    "error": point.get("error")}
    return list(rows.values())


def collect(output_dir: str | Path) -> list[dict]:
    """Every row, best score first; rows without a score (failed, unevaluated) last."""
    output_dir = Path(output_dir)
    runs = sorted(p for p in (output_dir / "runs").glob("*") if p.is_dir())
    from spectramind.config.runhash import evaluations, run_dir

    scored = {trained: run_dir(output_dir, hash_) for trained, hash_ in evaluations(output_dir).items()}
    rows = [r for r in (run_row(p, scored.get(p.name)) for p in runs) if r is not None] + folderless_rows(output_dir)
    rows.sort(key=lambda r: (r.get("score") is None, -(r.get("score") or 0.0), r["run_hash"] or ""))
    for i, row in enumerate(rows):
        row["best"] = i == 0 and row.get("score") is not None
    return rows


def swept(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between rows (all of them when nothing differs)."""
    keys = sorted({k for r in rows for k in r["params"]})
    varying = [k for k in keys if len({r["params"].get(k) for r in rows}) > 1]
    return varying or keys


def cell(row: dict, key: str, fmt: str = "{}") -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def markdown(rows: list[dict], params: list[str]) -> str:
    head = ["rank", "run", "status", *(title for _, title, _ in METRICS), *params, "error"]
    lines = ["# Ablation leaderboard", "", f"{len(rows)} runs, best score first; ★ marks the best.", "",
             "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows, 1):
        run = (f"[{row['run_hash']}]({row['link']})" if row["link"]
               else f"{row['run_hash'] or ''} (no folder)".strip())
        values = [f"{i}{' ★' if row['best'] else ''}", run, row["status"],
                  *(cell(row, key, fmt) for key, _, fmt in METRICS),
                  *(row["params"].get(p, "") for p in params), row.get("error") or ""]
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines) + "\n"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot(rows: list[dict], param: str, path: Path) -> None:
    """Score against one swept parameter: every run as a dot, the mean per value as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(r["params"].get(param, "(default)"), r["score"]) for r in rows if r.get("score") is not None]
    numeric = all(_number(v) is not None for v, _ in scored)
    order = sorted({v for v, _ in scored}, key=lambda v: _number(v) if numeric else v)
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(order)}
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.scatter([position[v] for v, _ in scored], [s for _, s in scored], alpha=0.7, label="run")
    means = [sum(s for v, s in scored if v == value) / sum(v == value for v, _ in scored) for value in order]
    ax.plot([position[v] for v in order], means, color="C1", label="mean")
    if numeric and min(position.values()) > 0 and max(position.values()) >= 20 * min(position.values()):
        ax.set_xscale("log")  # learning rates, weights: decades apart
    if not numeric or len(order) <= 8:
        ax.set_xticks([position[v] for v in order], order, rotation=20)
        ax.minorticks_off()
    ax.set(xlabel=param, ylabel="score", title=f"score vs {param}")
    ax.legend(loc="best")
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def build(output_dir: str | Path) -> dict:
    """Write the Markdown, the HTML and one PNG per swept parameter; return where and how many rows."""
    from spectramind.report.html import render

    output_dir = Path(output_dir)
    rows = collect(output_dir)
    params = swept(rows)
    plots = []
    if any(r.get("score") is not None for r in rows):
        for param in params:
            path = output_dir / PLOTS_DIR / f"score_vs_{re.sub(r'[^A-Za-z0-9_.-]+', '_', param)}.png"
            plot(rows, param, path)
            plots.append(path)
    for stale in set((output_dir / PLOTS_DIR).glob("score_vs_*.png")) - set(plots):
        stale.unlink()  # a parameter no longer swept
    files.write_text(output_dir / MARKDOWN, markdown(rows, params))
    files.write_text(output_dir / HTML, render(rows, params, METRICS, plots))
    return {"rows": len(rows), "markdown": output_dir / MARKDOWN, "html": output_dir / HTML, "plots": plots}
