"""The `spectramind` command line: parse, compose the config, call one stage function.

Only this module sees argv and typer; heavy libraries (torch, h5py, pandas) are imported inside
the commands that use them so that `--help` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from spectramind import __version__

app = typer.Typer(
    help="SpectraMind: Ariel raw frames to calibrated light curves to a scored submission.csv.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show, validate and hash the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Hydra overrides: group=option, key=value, +new.key=value, ~key.", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spectramind {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (or set SPECTRAMIND_DEBUG=1).")] = False,
) -> None:
    if debug:
        os.environ["SPECTRAMIND_DEBUG"] = "1"


@config_app.command("show")
def config_show(overrides: Overrides = None) -> None:
    """Print the resolved config as YAML."""
    from spectramind.config.stage import resolve

    cfg, _ = resolve("train", overrides or [])
    typer.echo(_yaml(cfg), nl=False)


@config_app.command("validate")
def config_validate(overrides: Overrides = None) -> None:
    """Check the resolved config against the schema; exit 2 with one line if it is wrong."""
    from spectramind.config.stage import resolve

    _, hash_ = resolve("train", overrides or [])
    typer.echo(f"config ok (run hash {hash_})")


@config_app.command("hash")
def config_hash(
    overrides: Overrides = None,
    command: Annotated[str, typer.Option(help="The command whose run hash to print.")] = "train",
) -> None:
    """Print the run hash of the resolved config."""
    from spectramind.config.stage import resolve

    typer.echo(resolve(command, overrides or [])[1])


@app.command()
def train(
    overrides: Overrides = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print config, run hash, folder and budgets; "
                                          "train nothing.")] = False,
) -> None:
    """Train a model under the trainer profile's guardrails (resumes an unfinished run)."""
    from spectramind.config import runhash
    from spectramind.config.stage import resolve

    if dry_run:
        cfg, hash_ = resolve("train", overrides or [])
        typer.echo(_yaml(cfg), nl=False)
        typer.echo(f"run hash: {hash_}")
        typer.echo(f"run folder: {runhash.run_dir(cfg['paths']['output_dir'], hash_)}")
        typer.echo("budgets: " + ", ".join(f"{k}={v}" for k, v in cfg["trainer"]["budgets"].items()))
        return
    raise typer.BadParameter("training arrives with the trainer; use --dry-run")


def _run(command: str, overrides: list[str] | None, work) -> None:
    """Start a stage (compose, validate, snapshot), call `work(stage) -> summary dict`, record the outcome."""
    from spectramind.config.stage import start

    stage = start(command, overrides or [])
    typer.echo(f"{command}: run {stage.run_hash} in {stage.run_dir}", err=True)
    try:
        summary = work(stage) or {}
    except BaseException as e:
        stage.finish("failed", error=(str(e).strip().splitlines() or [type(e).__name__])[0])
        raise
    stage.finish("complete", **summary)


def _yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def main() -> None:
    from spectramind.errors import SpectraMindError

    try:
        app()
    except SpectraMindError as e:
        if os.environ.get("SPECTRAMIND_DEBUG") == "1" or "--debug" in sys.argv:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
