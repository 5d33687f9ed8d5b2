"""Wall time of the README's `make test` on a fresh clone (a new .venv, installs included).

Slow (it is the whole CI run): not part of `make bench`. Run it as
    .venv/bin/python benchmarks/make_test_time.py
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import record

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "spectrallab"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SPECTRALLAB_"))}
        env["CI"] = "true"
        start = time.perf_counter()
        result = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    summary = [line.strip("= ") for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    summary = summary[-1] if summary else "(no pytest summary line)"
    print(f"make test on a fresh clone: {seconds:.0f} s, exit {result.returncode}; {summary}")
    out = {"seconds": round(seconds), "exit_code": result.returncode, "pytest": summary}
    print(f"recorded in {record('make_test', out)}")
    return out


if __name__ == "__main__":
    main()
