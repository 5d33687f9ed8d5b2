"""Rebuild the book in seconds: execute a chapter again only when its outputs could have changed.

Jupyter Book's execution cache (``execute_notebooks: cache``) keys a notebook on its code cells
alone. Two other things change what a chapter prints, and a cache that ignored them would serve
stale numbers:

* the profile (``SPECTRALLAB_PROFILE``): a ``cpu`` build must never show ``ci`` outputs;
* the library and widgets the chapters import (``src/spectrallab``, ``widgets``).

So the cache lives at ``<root>/<profile>-<hash of the library sources>``, where ``<root>`` is
``_build/.jupyter_cache`` in the repository (``SPECTRALLAB_BOOK_CACHE`` moves it). Editing one
chapter re-executes that chapter; editing the library re-executes every chapter; older caches of
the same profile made by the same checkout are deleted. ``make book FORCE=1`` empties the cache
first.

Each cache names the checkout that made it (a ``checkout`` file holding its path), so checkouts
that share one ``SPECTRALLAB_BOOK_CACHE`` (worktrees, a test build next to a development build)
keep each other's caches: deleting another checkout's cache would destroy its outputs, even
mid-build. A cache without that file predates it and is treated as this checkout's own only under
the checkout's default root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LIBRARY_SOURCES = ("src/spectrallab", "widgets")
OWNER_FILE = "checkout"  # the path of the checkout that made a cache


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
    checkout = Path(app.srcdir).resolve()
    directory = cache_directory(checkout)
    default_root = directory.parent.resolve() == (checkout / "_build" / ".jupyter_cache").resolve()
    for stale in directory.parent.glob(f"{directory.name.split('-')[0]}-*"):
        if stale == directory or not stale.is_dir():
            continue
        owner = stale / OWNER_FILE
        ours = owner.read_text().strip() == str(checkout) if owner.exists() else default_root
        if ours:
            shutil.rmtree(stale, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / OWNER_FILE).write_text(f"{checkout}\n")
    config.nb_execution_cache_path = str(directory)


def setup(app):
    # Kernels started by the build inherit this: long runs print a progress line, not a widget bar.
    os.environ.setdefault("SPECTRALLAB_PROGRESS", "lines")
    app.connect("config-inited", choose_cache)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
