"""Every chapter executes top to bottom in the `ci` profile (jupytext + nbclient), and the whole
book builds with warnings as errors. Execution times are recorded in test-artifacts/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

CHAPTERS = sorted((ROOT / "book").glob("*.md"))
ARTIFACTS = ROOT / "test-artifacts"


@pytest.mark.chapters
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes(chapter: Path, tmp_path):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(chapter)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", "chapter header needs a kernelspec"
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failing cell
    elapsed = time.perf_counter() - start
    ARTIFACTS.mkdir(exist_ok=True)
    times_file = ARTIFACTS / "chapter-times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    times[chapter.stem] = round(elapsed, 1)
    times_file.write_text(json.dumps(times, indent=2, sort_keys=True))
    print(f"{chapter.stem}: {elapsed:.1f} s")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """Build the book once per session (execution forced, -W): the HTML directory."""
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--all", "-W", "-n",
         "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, timeout=1800)
    log = result.stdout + result.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(log)
    assert result.returncode == 0, f"book build failed (log in test-artifacts/book-build.log):\n{log[-6000:]}"
    return out / "_build" / "html"


@pytest.mark.chapters
def test_book_builds_with_warnings_as_errors(built_book):
    for chapter in CHAPTERS:
        page = built_book / chapter.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"missing page {page}"
    assert (built_book / "index.html").exists()
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()  # math renders offline
    for chapter in CHAPTERS:
        html = (built_book / chapter.relative_to(ROOT).with_suffix(".html")).read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert not remote, f"{chapter.stem} loads from the network: {remote}"
        assert "Traceback" not in html, f"{chapter.stem} shows a traceback"
