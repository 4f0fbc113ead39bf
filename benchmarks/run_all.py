"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).parent
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
        failed.append(script.name)
sys.exit(1 if failed else 0)
