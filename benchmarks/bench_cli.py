"""Start-up cost of the CLI: `spectramind --help` and `spectramind config hash`, against a bare interpreter.

Prints JSON: median wall seconds over repeated runs, and each as a ratio to `python -c pass` measured
in the same run (the machines are shared, so ratios travel better than seconds).
"""

import json
import statistics
import subprocess
import sys
import time

REPEATS = 7
COMMANDS = {
    "python_bare": [sys.executable, "-c", "pass"],
    "help": [sys.executable, "-m", "spectramind", "--help"],
    "config_hash": [sys.executable, "-m", "spectramind", "config", "hash"],
    "import_torch": [sys.executable, "-c", "import torch"],
}
GOALS_S = {"help": 0.3, "config_hash": 1.5}


def _median_wall(cmd: list[str]) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    walls = {name: _median_wall(cmd) for name, cmd in COMMANDS.items()}
    report = {
        "repeats": REPEATS,
        "median_wall_s": {k: round(v, 4) for k, v in walls.items()},
        "ratio_to_bare_python": {k: round(v / walls["python_bare"], 2) for k, v in walls.items()},
        "within_goal": {k: walls[k] <= goal for k, goal in GOALS_S.items()},
        "goal_s": GOALS_S,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
