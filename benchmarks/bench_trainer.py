"""Steps per second of SpectraMind's trainer against a bare PyTorch loop (and Lightning's Trainer, when
installed) on the same model, data and number of steps, measured in one run. Prints JSON.

Each contender trains the same freshly seeded model through the same loss function; the loss function
stamps the clock, so steps/s is (steps - 1) / (last stamp - first stamp) for every contender alike:
the steady-state cost of a step (data loading, forward, backward, optimizer, the loop's own
bookkeeping), without set-up and tear-down. Whole-call wall times are reported beside it. Contenders
run interleaved, `--repeats` times, and the median is kept, because this machine is shared. Two clocks:
wall time, and this process's CPU time (everything runs in-process on one thread: no loader workers,
one intra-op thread), which other tenants of a shared machine cannot inflate; `ratio_vs_bare` uses CPU
time, `wall_ratio_vs_bare` wall time.

    python benchmarks/bench_trainer.py [--steps 400] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

N_BINS = 283


class Items(torch.utils.data.Dataset):
    """Random dict items of the light-curve dataset's shape: features and a (283,) target."""

    def __init__(self, n: int, n_features: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, n_features, generator=g)
        self.target = torch.randn(n, N_BINS, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "target": self.target[i]}


class MLP(torch.nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.GELU(),
                                        torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                        torch.nn.Linear(hidden, 2 * N_BINS))

    def forward(self, batch):
        mu, raw = self.body(batch["x"]).chunk(2, dim=-1)
        return mu, torch.nn.functional.softplus(raw) + 1e-3


def gaussian_nll(mu, sigma, target):
    loss = (0.5 * ((target - mu) / sigma) ** 2 + sigma.log()).mean()
    return loss, {"gll": loss.detach()}


class StampedLoss:
    """A loss that records when it is called (one call per step: no accumulation here)."""

    def __init__(self, inner=gaussian_nll):
        self.inner = inner
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []

    def __call__(self, mu, sigma, target):
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        return self.inner(mu, sigma, target)

    def steps_per_s(self, cpu: bool = False) -> float:
        stamps = self.cpu_stamps if cpu else self.stamps
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bare(make_model, dataset, steps: int, batch: int, loss: StampedLoss, clip: str) -> None:
    """What a person writes by hand: DataLoader, forward, loss, backward, (clip,) step."""
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    done = 0
    while done < steps:
        for items in loader:
            mu, sigma = model(items)
            value, _ = loss(mu, sigma, items["target"])
            value.backward()
            if clip == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break


def spectramind(make_model, dataset, steps: int, batch: int, loss: StampedLoss, clip: str) -> None:
    """The trainer with every guardrail on (time, signals, host memory, non-finite, disk), no validation."""
    from spectramind.config.stage import load
    from spectramind.train.trainer import fit

    torch.manual_seed(0)
    # The shipped ci_fast profile (the one home of every default) with the benchmark's sizes.
    cfg = load(["trainer=ci_fast", "trainer.max_epochs=1", f"trainer.batch_size={batch}", "trainer.max_samples=null",
                f"trainer.grad_clip.mode={clip}", "trainer.grad_clip.value=1.0", "trainer.log_every_n_steps=50",
                "trainer.progress_bar=false", "trainer.budgets.time_min=600", "trainer.budgets.host_memory_gib=null",
                "trainer.budgets.min_free_disk_gib=0.1"])[1].trainer
    with tempfile.TemporaryDirectory() as tmp:
        fit(make_model(), loss, dataset, None, cfg, run_dir=Path(tmp),
            optimizer=functools.partial(torch.optim.Adam, lr=1e-3))


def lightning_trainer(make_model, dataset, steps: int, batch: int, loss: StampedLoss, clip: str) -> None:
    """Lightning's Trainer, as its docs set it up, with the same model, loss and optimizer."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

        def training_step(self, items, _):
            mu, sigma = self.model(items)
            return loss(mu, sigma, items["target"])[0]

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    module = Module()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            gradient_clip_val=1.0 if clip == "norm" else None)
        trainer.fit(module, loader)


def compare(label: str, make_model, dataset, steps: int, batch: int, repeats: int, clip: str,
            inner_loss=gaussian_nll) -> dict:
    """Every contender on one epoch of exactly `steps` batches (the dataset's items repeated as needed)."""
    dataset = torch.utils.data.Subset(dataset, [i % len(dataset) for i in range(steps * batch)])
    contenders = {"bare": bare, "spectramind": spectramind}
    try:
        import lightning  # noqa: F401 -- the benchmark's optional peer, never a dependency

        contenders["lightning"] = lightning_trainer
    except ImportError:
        pass
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_rates: dict[str, list[float]] = {name: [] for name in contenders}
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:  # a warm-up run each: first-call costs (lazy imports, allocator growth) stay out
        contenders[name](make_model, dataset, max(2, steps // 4), batch, StampedLoss(inner_loss), clip)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no contender always goes first
            loss = StampedLoss(inner_loss)
            begin = time.perf_counter()
            contenders[name](make_model, dataset, steps, batch, loss, clip)
            walls[name].append(time.perf_counter() - begin)
            assert len(loss.stamps) == steps, f"{name} ran {len(loss.stamps)} steps, expected {steps}"
            rates[name].append(loss.steps_per_s())
            cpu_rates[name].append(loss.steps_per_s(cpu=True))
    median = {name: statistics.median(r) for name, r in rates.items()}

    def ratios(of: dict[str, list[float]], to: str) -> dict[str, float]:
        # Ratios within a round share the machine's momentary load; their median is the steadier figure.
        return {name: statistics.median(a / b for a, b in zip(of[name], of[to], strict=True))
                for name in names if name != to}

    result = {
        "model": label, "grad_clip": clip, "steps": steps, "batch_size": batch, "repeats": repeats,
        "bare_step_ms": 1000 / median["bare"],
        "steps_per_s": median,
        "cpu_steps_per_s": {name: statistics.median(r) for name, r in cpu_rates.items()},
        "wall_s_median": {name: statistics.median(w) for name, w in walls.items()},
        "ratio_vs_bare": ratios(cpu_rates, "bare"),
        "wall_ratio_vs_bare": ratios(rates, "bare"),
    }
    if "lightning" in median:
        result["spectramind_vs_lightning"] = ratios(cpu_rates, "lightning")["spectramind"]
        result["wall_spectramind_vs_lightning"] = ratios(rates, "lightning")["spectramind"]
    return result


def project_models(output_dir: str, seconds: float, repeats: int) -> list[dict]:
    """The project's trainable models on the synthetic store (built under `output_dir` when missing);
    each contender's run lasts about `seconds` (the step count follows a probe of the bare step)."""
    from spectramind.config.stage import load
    from spectramind.data.prepare import calibrate
    from spectramind.data.simulate import simulate_raw
    from spectramind.models.baseline import NEEDS_BASELINE, fit_baseline
    from spectramind.train.setup import build

    runs = []
    for model in ("residual", "cnn1d", "transformer"):
        s = load([f"model={model}", "trainer=ci_fast", f"paths.output_dir={output_dir}"])[1]
        simulate_raw(s, progress=False)  # each a no-op once its output is current
        calibrate(s, progress=False)
        if s.model.target in NEEDS_BASELINE:
            fit_baseline(s, progress=False)
        parts = build(s)
        make = functools.partial(_rebuilt, parts.model, parts.model.state_dict())
        probe = StampedLoss(parts.loss_fn)
        bare(make, parts.train_set, 4, 8, probe, "norm")
        steps = int(min(200, max(10, seconds * probe.steps_per_s())))
        runs.append(compare(model, make, parts.train_set, steps, 8, repeats, "norm", parts.loss_fn))
    return runs


def _rebuilt(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    model.load_state_dict(state)  # the same initial weights for every contender
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady timings)")
    parser.add_argument("--output-dir", default="outputs", help="where the synthetic store is (or is built)")
    parser.add_argument("--no-project-models", action="store_true", help="only the MLPs")
    parser.add_argument("--model-seconds", type=float, default=4.0,
                        help="about how long each contender trains each project model per repeat")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "python": sys.version.split()[0], "threads": args.threads, "goal_vs_bare": 0.97, "runs": []}
    small = functools.partial(MLP, 64, 96)  # ~2 ms per CPU step at batch 32: per-step overhead shows
    for clip in ("none", "norm"):
        results["runs"].append(compare("mlp-2ms", small, Items(args.steps * 32, 64), args.steps, 32,
                                       args.repeats, clip))
    wide = functools.partial(MLP, 64, 512)  # a heavier step where the model dominates
    results["runs"].append(compare("mlp-512", wide, Items(args.steps * 64, 64), args.steps // 2, 64,
                                   args.repeats, "norm"))
    if not args.no_project_models:
        results["runs"] += project_models(args.output_dir, args.model_seconds, args.repeats)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
