"""Rebuild the book in seconds: execute a chapter again only when its outputs could have changed.

Jupyter Book's execution cache (``execute_notebooks: cache``) keys a notebook on its code cells
alone. Two other things change what a chapter prints, and a cache that ignored them would serve
stale numbers:

* the profile (``SPECTRALLAB_PROFILE``): a ``cpu`` build must never show ``ci`` outputs;
* the library and widgets the chapters import (``src/spectrallab``, ``widgets``).

So the cache lives at ``<root>/<profile>-<hash of the library sources>``, where ``<root>`` is
``_build/.jupyter_cache`` in the repository (``SPECTRALLAB_BOOK_CACHE`` moves it). Editing one
chapter re-executes that chapter; editing the library re-executes every chapter; older caches of
the same profile are deleted. ``make book FORCE=1`` empties the cache first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LIBRARY_SOURCES = ("src/spectrallab", "widgets")


def library_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for folder in LIBRARY_SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_directory(root: Path) -> Path:
    from spectrallab.profiles import profile

    base = Path(os.environ.get("SPECTRALLAB_BOOK_CACHE") or root / "_build" / ".jupyter_cache")
    return base / f"{profile()}-{library_hash(root)}"


def choose_cache(app, config) -> None:
    if config.nb_execution_mode != "cache":
        return
    directory = cache_directory(Path(app.srcdir))
    for stale in directory.parent.glob(f"{directory.name.split('-')[0]}-*"):
        if stale != directory and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    config.nb_execution_cache_path = str(directory)


def setup(app):
    # Kernels started by the build inherit this: long runs print a progress line, not a widget bar.
    os.environ.setdefault("SPECTRALLAB_PROGRESS", "lines")
    app.connect("config-inited", choose_cache)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
