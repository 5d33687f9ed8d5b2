"""`make book` rebuilds fast and stays correct: Jupyter Book's execution cache, keyed by the code
cells, the profile and the library sources (book/_ext/execution_cache.py).

A two-chapter book built with the project's own _config.yml and extensions, whose cells log every
execution to a file: a rebuild with nothing changed executes nothing, editing one chapter executes
only that one, changing the profile or the library executes both, and a failing cell still fails
the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def chapter(log: Path, name: str, body: str = "") -> str:
    return (
        HEADER + f"\n# Chapter {name}\n\n```{{code-cell}} ipython3\n"
        f"with open({str(log)!r}, 'a') as f:\n    f.write({name!r} + '\\n')\n{body}print('ran {name}')\n```\n"
    )


@pytest.fixture
def tiny_book(tmp_path):
    root = tmp_path / "book-root"
    (root / "book").mkdir(parents=True)
    shutil.copytree(ROOT / "book" / "_ext", root / "book" / "_ext")
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static")  # the extensions' CSS and JS
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/a\nchapters:\n  - file: book/b\n")
    (root / "src" / "spectrallab").mkdir(parents=True)
    (root / "src" / "spectrallab" / "library.py").write_text("VERSION = 1\n")
    log = tmp_path / "executions.log"
    for name in "ab":
        (root / "book" / f"{name}.md").write_text(chapter(log, name))
    return root, log


def build(root: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SPECTRALLAB_BOOK_CACHE": str(root / "cache"), **env}
    return subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )


def executed(log: Path) -> list[str]:
    runs = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return sorted(runs)


@pytest.mark.chapters
def test_rebuilds_execute_only_what_changed_and_failures_still_fail(tiny_book):
    root, log = tiny_book
    first = build(root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert executed(log) == ["a", "b"]
    assert "ran b" in (root / "_build" / "html" / "book" / "b.html").read_text()

    again = build(root)
    assert again.returncode == 0 and executed(log) == [], "a rebuild with nothing changed executed a chapter"

    (root / "book" / "b.md").write_text(chapter(log, "b", body="x = 2\n"))
    edited = build(root)
    assert edited.returncode == 0 and executed(log) == ["b"], "editing b must re-execute b only"

    other_profile = build(root, SPECTRALLAB_PROFILE="cpu")
    assert other_profile.returncode == 0 and executed(log) == ["a", "b"], "a cached ci output served a cpu build"

    (root / "src" / "spectrallab" / "library.py").write_text("VERSION = 2\n")
    library_changed = build(root)
    assert library_changed.returncode == 0 and executed(log) == ["a", "b"], "a library change must re-execute all"
    assert len(list((root / "cache").glob("ci-*"))) == 1, "the stale ci cache was not removed"

    (root / "book" / "a.md").write_text(chapter(log, "a", body="raise RuntimeError('a failing cell')\n"))
    failing = build(root)
    assert failing.returncode != 0, "a failing cell must fail the build"
    assert "a failing cell" in failing.stdout + failing.stderr


@pytest.mark.chapters
def test_checkouts_sharing_a_cache_root_keep_each_others_caches(tiny_book, tmp_path):
    """Two checkouts with different library sources and one SPECTRALLAB_BOOK_CACHE (worktrees):
    neither build deletes the other's cache, so switching back executes nothing."""
    root, log = tiny_book
    other = tmp_path / "other-checkout"
    shutil.copytree(root, other)
    (other / "src" / "spectrallab" / "library.py").write_text("VERSION = 3\n")
    shared = tmp_path / "shared-cache"
    assert build(root, SPECTRALLAB_BOOK_CACHE=str(shared)).returncode == 0
    assert build(other, SPECTRALLAB_BOOK_CACHE=str(shared)).returncode == 0
    assert executed(log) == ["a", "a", "b", "b"]
    assert len(list(shared.glob("ci-*"))) == 2, "one checkout deleted the other's cache"
    again = build(root, SPECTRALLAB_BOOK_CACHE=str(shared))
    assert again.returncode == 0 and executed(log) == [], "the first checkout's cache was lost"
