"""Developer sessions: `nox -s tests lint smoke bench docker`."""

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"  # the CPU wheel; an open range pulls a CUDA build of several GB


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")


@nox.session(python=["3.10", "3.11", "3.12"])
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-q", *session.posargs)
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def smoke(session: nox.Session) -> None:
    """The trainer=ci_fast path end to end, in a scratch outputs folder."""
    _install(session)
    out = session.create_tmp()
    session.run("spectramind", "train", "trainer=ci_fast", f"paths.output_dir={out}")


@nox.session
def bench(session: nox.Session) -> None:
    _install(session)
    for script in sorted(__import__("pathlib").Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script))


@nox.session(python=False)
def docker(session: nox.Session) -> None:
    """Build the CUDA image and run its `--version`; skips where no Docker engine answers."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        session.skip("no docker command on this machine")
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode:
        session.skip(f"no Docker engine is running here ({(probe.stderr.strip().splitlines() or ['?'])[-1]})")
    tag = session.posargs[0] if session.posargs else "spectramind:dev"
    session.run("docker", "build", "--tag", tag, ".", external=True)
    session.run("docker", "run", "--rm", tag, "--version", external=True)
