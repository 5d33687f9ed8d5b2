"""Make the built book work offline: MathJax served from the book itself, no duplicated scripts.

Sphinx loads MathJax from a CDN by default. The ``sphinx-mathjax-offline`` distribution on PyPI
carries a MathJax 3 build but installs it under a directory name Python cannot import, so this
extension finds those files through the distribution's metadata and copies them into ``_static``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from sphinx.util.fileutil import copy_asset

DISTRIBUTION = "sphinx-mathjax-offline"


def mathjax_directory() -> Path:
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError as err:
        raise RuntimeError(f"{DISTRIBUTION} is not installed; run `make setup`") from err
    entry = next(f for f in dist.files if str(f).endswith("static/mathjax/tex-chtml.js"))
    return Path(dist.locate_file(entry)).parent


def copy_mathjax(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_asset(str(mathjax_directory()), str(Path(app.outdir) / "_static" / "mathjax"))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """sphinx-thebe registers its inline config twice under Jupyter Book 1, and a second
    ``const THEBE_JS_URL`` is a JavaScript error on every page; keep the first of each script."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body")
        key = ("body", body) if body else ("file", str(getattr(script, "filename", script)))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    mathjax_directory()  # fail early, with a clear message, when the files are missing
    app.config.mathjax_path = "mathjax/tex-chtml.js"
    app.connect("build-finished", copy_mathjax)
    app.connect("html-page-context", drop_duplicate_scripts, priority=1000)  # after others add theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
