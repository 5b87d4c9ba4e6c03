"""Run every benchmarks/bench_*.py in turn (`make bench`); extra arguments (e.g. --quick) pass through."""

import subprocess
import sys
from pathlib import Path

failed = []
for script in sorted(Path(__file__).parent.glob("bench_*.py")):
    print(f"\n===== {script.name} =====", flush=True)
    if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode != 0:
        failed.append(script.name)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")
