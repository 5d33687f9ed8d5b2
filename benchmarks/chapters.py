"""Time to execute each chapter in a profile (default ci), recorded with the machine.

The budget (DESIGN.md): every chapter well under a minute on 2 CPU cores in the `ci` profile.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import record

ROOT = Path(__file__).resolve().parents[1]


def main(profile: str = "ci") -> dict:
    import jupytext
    from nbclient import NotebookClient

    os.environ["SPECTRALLAB_PROFILE"] = profile
    os.environ.setdefault("SPECTRALLAB_PROGRESS", "lines")
    os.environ.setdefault("SPECTRALLAB_HOME", tempfile.mkdtemp(prefix="spectrallab-bench-"))
    times = {}
    for chapter in sorted((ROOT / "book").glob("*.md")):
        notebook = jupytext.read(chapter)
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            NotebookClient(notebook, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": cwd}}).execute()
            times[chapter.stem] = round(time.perf_counter() - start, 1)
        print(f"{chapter.stem:>12}: {times[chapter.stem]:6.1f} s  (profile {profile})")
    print(f"recorded in {record(f'chapters_{profile}', {'profile': profile, 'seconds': times})}")
    return times


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ci")
