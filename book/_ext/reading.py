"""What a reader of the built book sees around the chapters' text: a column nothing spills out of,
one search box, and a search whose index and snippets hold prose, not LaTeX.

* ``book/_static/spectrallab.css`` (registered here) wraps code and text outputs inside the text
  column instead of clipping them, and lets a display equation too wide for a phone scroll in its
  own box rather than widen the page.
* sphinx-book-theme shows a search field in the primary sidebar and a search button in the
  article header; the sidebar field is dropped (the button is there at every width, Ctrl+K too).
* The search index leaves out math: the LaTeX source of an equation (``\\frac``, ``\\mathrm``) is
  no word a reader searches for. Sphinx makes each result's snippet from the text of the page it
  fetches; ``search_snippets.js`` puts inline math there as plain symbols (``\\sigma_i`` → σ_i) and
  leaves display math out, so no snippet shows raw LaTeX.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes

STATIC = Path(__file__).resolve().parents[1] / "_static"
SIDEBAR = ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]  # the theme's, less search-button-field


def configure(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    if not config.html_sidebars:
        config.html_sidebars = {"**": SIDEBAR}


def index_prose_only(app) -> None:
    """Wrap the HTML builder's indexing so that math nodes are not indexed."""
    if app.builder.format != "html" or not hasattr(app.builder, "index_page"):
        return
    index_page = app.builder.index_page

    def index_without_math(pagename, doctree, title):
        pruned = doctree.deepcopy()
        for node in list(pruned.findall(lambda n: isinstance(n, (nodes.math, nodes.math_block)))):
            node.parent.remove(node)
        index_page(pagename, pruned, title)

    app.builder.index_page = index_without_math


def search_page_script(app, pagename, templatename, context, doctree) -> None:
    if pagename == "search":
        app.add_js_file("search_snippets.js", priority=900)  # after searchtools.js (500)


def setup(app):
    app.add_css_file("spectrallab.css", priority=900)  # after the theme's
    app.connect("config-inited", configure)
    app.connect("builder-inited", index_prose_only)
    app.connect("html-page-context", search_page_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
