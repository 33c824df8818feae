"""`spectramind reproduce RUN`: re-create a finished training run from its folder alone in a scratch folder,
then compare what the two made and name what changed in between.

The folder holds all it takes: config.yaml (run again as it is, only where things go moved into the scratch
folder), overrides.yaml (recorded again with the re-created run) and env.json (versions, threads, the code
digest and the data fingerprint of the run hash). The data is rebuilt from what the config names: a synthetic
set is simulated again (deterministic by seed), real data calibrated again from `data.root` as it is now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from spectramind import files
from spectramind.config import runhash
from spectramind.config.settings import Reproduce, Settings, build
from spectramind.errors import ConfigError, DataError
from spectramind.evaluate.predict import resolve_run, run_config, trained_settings
from spectramind.train import checkpoint, metrics

# metrics.jsonl fields that measure the machine, not the training: a step's wall-clock time and the throughput
# derived from it, the process's resident memory and the GPU allocator's peak. Everything else (losses, their
# parts, gradient norm, lr, micro-batch, step and epoch) follows from the data, the config and the arithmetic.
TIMING = ("step_time_s", "samples_per_s", "host_mem_gib", "gpu_mem_gib")
# The packages env.json records that get a line of their own (the rest share one).
OWN_LINE = ("spectramind", "torch")


@dataclass(frozen=True)
class Recreation:
    run_dir: Path          # the run's own folder (read only)
    trained: Settings      # the run's config.yaml as it is
    scratch: Path          # where it is re-created: outputs index, runs/, data/
    cfg: dict              # the run's config.yaml with its folders moved into `scratch`
    settings: Settings
    overrides: list[str]   # the run's overrides.yaml
    source: str            # where the re-created run's data comes from, in words


@dataclass(frozen=True)
class Line:
    item: str
    same: bool
    detail: str
    kind: str              # result; data (what it was made from); context (what it ran with); hash (follows
                           # from config, data and code, so never a reason of its own)


@dataclass(frozen=True)
class Report:
    run: str               # the run hash
    where: str             # the scratch folder, and whether it stays
    lines: list[Line]
    tolerance: Reproduce | None

    @property
    def mismatch(self) -> bool:
        """A result, or the data it was made from, differs; a difference in context alone is no mismatch."""
        return any(not line.same and line.kind in ("result", "data") for line in self.lines)

    @property
    def text(self) -> str:
        width = max(len(line.item) for line in self.lines)
        rows = [f"  {'same' if line.same else 'differs':8} {line.item:{width}}  {line.detail}" for line in self.lines]
        return "\n".join([f"reproduce: run {self.run} re-created in {self.where}", *rows])

    @property
    def verdict(self) -> str:
        """The last line: the match, or (the error's message) what differed and what changed since the run."""
        exact = (f"within rtol={self.tolerance.rtol}, atol={self.tolerance.atol} (a GPU trained one of them)"
                 if self.tolerance else "bit-identical on CPU")
        if not self.mismatch:
            return f"reproduce: run {self.run} reproduced, checkpoint and metrics {exact}"
        results = [line.item for line in self.lines if not line.same and line.kind == "result"]
        changed = [line.item for line in self.lines if not line.same and line.kind in ("data", "context")]
        made = f"the re-creation's {', '.join(results)} differ ({exact} expected)" if results else \
            "the re-creation's results match"
        why = ", ".join(changed) or "nothing env.json records (a nondeterministic operation?)"
        return f"run {self.run}: {made}; changed since the run: {why}"


def find(s: Settings, run: str) -> Path:
    """The run `run` names (a folder, a run hash under paths.output_dir, or latest, as predict's run=),
    refused unless it is a complete, single-process train run: nothing else can be re-created here."""
    from spectramind.devices import process_count

    folder = resolve_run(dataclasses.replace(s, predict=dataclasses.replace(s.predict, run=run)))
    command = next((e.get("command") for e in metrics.read(folder / "events.jsonl") if e.get("event") == "start"),
                   None)
    if command is None:
        raise ConfigError(f"reproduce: {folder} is not a run folder (no start event in events.jsonl)")
    if command != "train":
        raise ConfigError(f"reproduce: {folder} is a {command} run; only train runs are re-created (reproduce "
                          f"the train run it used, then run `spectramind {command}` on it again)")
    summary = files.read_json(folder / "summary.json")
    if summary.get("status") != "complete":
        why = (f"stopped ({summary['stop_reason']}): where a guard stops depends on the machine" if summary
               else "not finished: `spectramind train` with its overrides resumes it")
        raise ConfigError(f"reproduce: run {folder.name} is {why}; only complete runs are re-created")
    trained = trained_settings(folder)
    here = process_count(trained.trainer.devices, trained.trainer.device)
    if summary["world_size"] > 1 or here > 1:
        raise ConfigError(f"reproduce: run {folder.name} trains on {max(summary['world_size'], here)} processes "
                          f"(trainer.devices={trained.trainer.devices}); only single-process runs are re-created")
    return folder


@contextlib.contextmanager
def scratch(r: Reproduce) -> Iterator[Path]:
    """A new folder in reproduce.dir (or the system's temporary folder), removed at the end unless reproduce.keep."""
    if r.dir is not None:
        Path(r.dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="spectramind-reproduce-", dir=r.dir))
    try:
        yield folder
    finally:
        if not r.keep:
            shutil.rmtree(folder, ignore_errors=True)


def recreation(run_dir: Path, folder: Path) -> Recreation:
    """The run's config with every folder it writes in `folder`: none of them is in the run hash."""
    import yaml

    cfg = run_config(run_dir)
    trained = build(cfg)  # before the folders move: frozen values, not views of cfg
    cfg["paths"]["output_dir"] = str(folder)
    data = cfg["data"]
    if data["simulate"] is not None:
        data["root"] = str(folder / "data" / "raw")
        source = f"simulated again with seed {cfg['seed']}"
    else:
        source = f"calibrated again from {data['root']} as it is now"
    data["store"], data["baseline"] = str(folder / "data" / "store"), str(folder / "data" / "baseline")
    # Only metrics.jsonl is compared; the other backends would log a second run to their servers (mlflow, wandb).
    cfg["logger"] = {k: v for k, v in cfg["logger"].items() if k == "jsonl"}
    path = run_dir / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable overrides ({str(e).splitlines()[0]})") from e
    return Recreation(run_dir, trained, folder, cfg, build(cfg), list(overrides or []), source)


def compare(again: Recreation, r: Reproduce) -> Report:
    """What the re-created run made against the run's, and what each was made with."""
    from spectramind.config.stage import run_hash
    from spectramind.pipeline import input_fingerprint

    here_dir = runhash.run_dir(again.scratch, run_hash("train", again.cfg, input_fingerprint("train", again.settings)))
    tol = tolerance(_devices(again.run_dir) + _devices(here_dir), r)
    lines = _results(again.run_dir, here_dir, tol) + _made_with(again, here_dir)
    return Report(again.run_dir.name, f"{again.scratch} ({'kept' if r.keep else 'removed afterwards'})", lines, tol)


def _results(run_dir: Path, here_dir: Path, tol: Reproduce | None) -> list[Line]:
    run_ckpt, here_ckpt = (checkpoint.load(d / "checkpoints" / "last.pt") for d in (run_dir, here_dir))
    lines = [compare_values(f"checkpoint {part}", run_ckpt[part], here_ckpt[part], tol, "values of last.pt")
             for part in ("model", "optimizer")]
    logged = compare_values("metrics", records(run_dir / "metrics.jsonl"), records(here_dir / "metrics.jsonl"), tol,
                            "values of metrics.jsonl")
    return [*lines, dataclasses.replace(logged, detail=f"{logged.detail}; not compared: {', '.join(TIMING)}")]


def _made_with(again: Recreation, here_dir: Path) -> list[Line]:
    """The data, code, versions and device of both runs, from their env.json and events.jsonl."""
    from spectramind.data.store import H5_NAME
    from spectramind.pipeline import input_fingerprint

    run_env, here_env = _env(again.run_dir), _env(here_dir)
    data = _pair("data", run_env["data_fingerprint"], here_env["data_fingerprint"], "data", "fingerprint {}",
                 "re-created")
    lines = [dataclasses.replace(data, detail=f"{data.detail} (the re-creation's data {again.source})")]
    store_now = Path(again.trained.data.store)
    if (store_now / H5_NAME).is_file():  # what a `spectramind train` with the run's overrides would read here
        now = _pair("data now", run_env["data_fingerprint"], input_fingerprint("train", again.trained),
                    fmt="fingerprint {}", label="now")
        lines.append(dataclasses.replace(now, detail=f"{now.detail} in {store_now}"))
    others = sorted(set(run_env["packages"]) - set(OWN_LINE))
    return [*lines,
            _pair("run hash", again.run_dir.name, here_dir.name, "hash"),
            _pair("code", run_env["code"]["digest"], here_env["code"]["digest"], fmt="digest {}"),
            _pair("spectramind", run_env["packages"].get("spectramind"), here_env["packages"].get("spectramind")),
            _pair("torch", _torch(run_env), _torch(here_env)),
            _pair("other packages", _versions(run_env, others), _versions(here_env, others)),
            _pair("python", run_env["python"], here_env["python"]),
            _pair("device", _device_text(_devices(again.run_dir), run_env),
                  _device_text(_devices(here_dir), here_env))]


def tolerance(devices: list[str], r: Reproduce) -> Reproduce | None:
    """None (bit-identical) when both runs trained on a CPU only; else reproduce.rtol/atol: GPU kernels are
    free to sum in another order (atomics, the GPU's own tiling), so their last bits are not promised."""
    return None if devices and all(d == "cpu" for d in devices) else r


def compare_values(item: str, run, here, tol: Reproduce | None, what: str) -> Line:
    """One result line: every leaf of two nested structures (tensors and plain values) compared."""
    ours, theirs = dict(_leaves(run)), dict(_leaves(here))
    keys = sorted(set(ours) | set(theirs))
    differ = [k for k in keys if k not in ours or k not in theirs or not matches(ours[k], theirs[k], tol)]
    if not differ:
        return Line(item, True, f"{len(keys)} {what}", "result")
    first = differ[0]
    a, b = ours.get(first), theirs.get(first)
    if torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape:
        gap = f"max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
    else:
        gap = f"run {_short(a)}, here {_short(b)}"
    return Line(item, False, f"{len(differ)} of {len(keys)} {what} differ; first {first}: {gap}", "result")


def matches(run, here, tol: Reproduce | None) -> bool:
    """Bit-identical (tol None), or within tol as torch.allclose reads it with the run's value as reference;
    NaN matches NaN (a skipped step logs a non-finite loss)."""
    if torch.is_tensor(run) or torch.is_tensor(here):
        if not (torch.is_tensor(run) and torch.is_tensor(here)) or run.shape != here.shape \
                or run.dtype != here.dtype:
            return False
        if tol is None or not run.is_floating_point():
            return torch.equal(_bits(run), _bits(here))
        return torch.allclose(here, run, rtol=tol.rtol, atol=tol.atol, equal_nan=True)
    if isinstance(run, float) and isinstance(here, float):
        if math.isnan(run) or math.isnan(here):
            return math.isnan(run) and math.isnan(here)
        return run == here if tol is None else abs(here - run) <= tol.atol + tol.rtol * abs(run)
    return run == here


def records(path: Path) -> dict[str, dict]:
    """metrics.jsonl by step (and epoch end) without the timing fields; the last record of a key wins: a
    resumed run logs again the steps after the checkpoint it resumed from."""
    return {f"step {r['step']}" + (" epoch end" if "train/epoch_loss" in r else ""):
            {k: v for k, v in r.items() if k not in TIMING} for r in metrics.read(path)}


def _env(folder: Path) -> dict:
    env = files.read_json(folder / "env.json")
    if "data_fingerprint" not in env or "code" not in env:
        raise DataError(f"{folder / 'env.json'}: no data fingerprint or code digest (written by an older "
                        "spectramind); the run cannot be compared with a re-creation")
    return env


def _devices(folder: Path) -> list[str]:
    """The devices each training session of the run used, in order (a resumed run has several)."""
    found = [e.get("device", "not recorded") for e in metrics.read(folder / "events.jsonl")
             if e.get("event") == "built"]
    return list(dict.fromkeys(found))


def _device_text(devices: list[str], env: dict) -> str:
    gpus = ", ".join(g["name"] for g in env.get("gpus", []))
    used = " then ".join(devices) or "not recorded"
    return f"{used} ({gpus or 'no GPU'}; torch threads {env.get('threads', 'not recorded')})"


def _torch(env: dict) -> str:
    return f"{env.get('torch')} (CUDA {env.get('cuda') or 'none'})"


def _versions(env: dict, names: list[str]) -> str:
    return ", ".join(f"{n} {env['packages'].get(n)}" for n in names)


def _pair(item: str, run, here, kind: str = "context", fmt: str = "{}", label: str = "here") -> Line:
    """A line for a value the run recorded and its counterpart (`label`: the re-creation's, or now's)."""
    detail = fmt.format(run) if run == here else f"run {fmt.format(run)}, {label} {fmt.format(here)}"
    return Line(item, run == here, detail, kind)


def _leaves(value, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted path, leaf) of nested dicts and lists: a state dict's tensors and plain values."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield from _leaves(inner, f"{prefix}{i}.")
    else:
        yield prefix[:-1], value


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal bits, so NaN payloads and the sign of zero count too."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _short(value) -> str:
    return "absent" if value is None else (f"tensor {tuple(value.shape)} {value.dtype}" if torch.is_tensor(value)
                                           else repr(value))
