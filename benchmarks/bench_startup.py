"""Start-up costs: what the settings, the CLI's help and a pipeline step pay before they do anything.

    uv run python benchmarks/bench_startup.py [--repeat 5]

Each figure is the median wall clock of ``--repeat`` fresh processes, printed beside the
baseline it is measured against in the same run (this machine is noisy):

- ``import trendloop.settings`` and ``trendloop --help``, beside a bare ``python -c pass``
  and ``import torch`` (what every one of them paid when the settings imported the model);
- a light pipeline step end to end on kfp.local (a one-step pipeline running
  ``head_state``: kfp's orchestration, the step's process, its imports and its work),
  beside the same pipeline with a component that imports nothing of ours.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(command: list[str], repeat: int, env: dict | None = None) -> float:
    """Median wall clock of ``command`` in fresh processes."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PIPELINE = """
import sys, time
from pathlib import Path
from kfp import dsl, local
from pipelines.components import build
from trendloop.settings import Settings

root = Path(sys.argv[1])
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=False)

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def nothing(config: str) -> str:
    return config

c = build("python:3.11")
config = Settings(home=root / "home").for_step(())

@dsl.pipeline(name="light")
def light(config: str) -> str:
    return c.head_state(config=config).set_caching_options(False).output

@dsl.pipeline(name="bare")
def bare(config: str) -> str:
    return nothing(config=config).set_caching_options(False).output

for name, pipeline in (("bare", bare), ("light", light)):
    start = time.perf_counter()
    pipeline(config=config)
    print(name, time.perf_counter() - start, flush=True)
"""


def step_seconds(repeat: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {"bare": [], "light": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "one_step.py"  # a file: KFP reads the component's source from it
        script.write_text(PIPELINE)
        for _ in range(repeat):
            command = [sys.executable, str(script), tmp]
            done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the one-step pipelines failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            out = done.stdout
            for line in out.splitlines():
                name, _, value = line.partition(" ")
                if name in runs:
                    runs[name].append(float(value))
    return {name: statistics.median(values) for name, values in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    python = sys.executable
    trendloop = str(Path(python).parent / "trendloop")
    rows = [
        ("python -c pass (baseline)", seconds([python, "-c", "pass"], args.repeat)),
        ("import torch (what the settings paid before)", seconds([python, "-c", "import torch"], args.repeat)),
        ("import trendloop.settings", seconds([python, "-c", "import trendloop.settings"], args.repeat)),
        ("trendloop --help", seconds([trendloop, "--help"], args.repeat)),
    ]
    steps = step_seconds(args.repeat)
    rows += [
        ("kfp.local step importing nothing of ours (baseline)", steps["bare"]),
        ("kfp.local step head_state (settings + store)", steps["light"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:6.2f} s")
    print(f"a light step's fixed cost over kfp's own: {steps['light'] - steps['bare']:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
