"""Time to execute each chapter of the book in a profile, against the profile's budget, with the machine.

    .venv/bin/python benchmarks/chapters.py cpu        # or ci, gpu; chapters in table-of-contents order

Budgets (``spectrallab.profiles.BUDGETS``): ``ci`` ≤ 45 s a chapter; ``cpu`` ≤ 3 min a chapter and
≤ 20 min for the book on 2 cores; ``gpu`` ≤ 5 min a chapter. Each chapter runs in a fresh kernel, in
the order of ``_toc.yml``, with one shared ``SPECTRALLAB_HOME`` as in a real build (a pretrained
base trained by one chapter is reused by the next). Results: ``results/chapters_<profile>.json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import record

ROOT = Path(__file__).resolve().parents[1]


def chapters_in_order() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    # a flat list of chapters, or parts of chapters (the book's "Chapters" and "Reference")
    entries = toc.get("chapters", []) + [entry for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    files = [toc["root"]] + [entry["file"] for entry in entries]
    return [ROOT / f"{name}.md" for name in files]


def main(profile: str = "ci", only: list[str] | None = None) -> dict:
    os.environ["SPECTRALLAB_PROFILE"] = profile
    os.environ.setdefault("SPECTRALLAB_PROGRESS", "lines")
    os.environ.setdefault("SPECTRALLAB_HOME", tempfile.mkdtemp(prefix="spectrallab-bench-"))
    import jupytext
    from nbclient import NotebookClient

    from spectrallab.profiles import BUDGETS

    budget = BUDGETS[profile]
    times = {}
    for chapter in chapters_in_order():
        if only and chapter.stem not in only:
            continue
        notebook = jupytext.read(chapter)
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            NotebookClient(
                notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": cwd}}
            ).execute()
            times[chapter.stem] = round(time.perf_counter() - start, 1)
        print(
            f"{chapter.stem:>22}: {times[chapter.stem]:6.1f} s  = {times[chapter.stem] / budget['chapter']:.2f}"
            f" of the {budget['chapter']} s chapter budget (profile {profile})",
            flush=True,
        )
    total = round(sum(times.values()), 1)
    worst = max(times, key=times.get)
    summary = {
        "profile": profile,
        "seconds": times,
        "total_seconds": total,
        "budget": budget,
        "slowest": worst,
        "slowest_share_of_chapter_budget": round(times[worst] / budget["chapter"], 2),
        "total_share_of_book_budget": round(total / budget["book"], 2) if budget["book"] else None,
    }
    print(
        f"total {total:.0f} s; slowest {worst} at {summary['slowest_share_of_chapter_budget']:.2f} of its budget"
        + (
            f"; {summary['total_share_of_book_budget']:.2f} of the {budget['book']} s book budget"
            if budget["book"]
            else ""
        )
    )
    if only:
        summary["only"] = only
        print("(a subset: not recorded)")
        return summary
    print(f"recorded in {record(f'chapters_{profile}', summary)}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ci", sys.argv[2:] or None)
