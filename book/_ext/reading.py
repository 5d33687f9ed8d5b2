"""What a reader of the built book sees around the chapters' text: a column nothing spills out of,
one search box, and a search whose index and snippets hold prose, not LaTeX.

* ``book/_static/spectrallab.css`` (registered here) wraps code and text outputs inside the text
  column instead of clipping them, and lets a display equation too wide for a phone scroll in its
  own box rather than widen the page.
* A table a cell prints must not wrap: a wrapped row loses its columns. Each row of a printed table
  in a text output is marked ``<span class="sl-row">`` at build time (:func:`mark_table_rows`); the
  CSS keeps such a row on one line, and the output's box scrolls sideways where the screen is
  narrower than the row (a phone), while the prose lines around it keep wrapping. A line is a row
  when it has at least three fields parted by runs of two or more spaces (what aligned columns
  look like in plain text; one space parts the words of a sentence), or it is a rule of dashes or
  equals signs in an output that has rows. A line with one such gap is not: the chapters print
  labelled sentences that way (``LoRA r=4     : magnitude change per radian ...``), and a sentence
  must wrap. The browser test checks the rows at 390 px by the same rule.
* sphinx-book-theme shows a search field in the primary sidebar and a search button in the
  article header; the sidebar field is dropped (the button is there at every width, Ctrl+K too).
* The search index leaves out math: the LaTeX source of an equation (``\\frac``, ``\\mathrm``) is
  no word a reader searches for. Sphinx makes each result's snippet from the text of the page it
  fetches; ``search_snippets.js`` puts inline math there as plain symbols (``\\sigma_i`` → σ_i) and
  leaves display math out, so no snippet shows raw LaTeX.
"""

from __future__ import annotations

import html
import re
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


# -- printed tables ---------------------------------------------------------------------------------

# A text output as myst-nb writes it: stream, stderr or text/plain, highlighted into a <pre>.
OUTPUT_PRE = re.compile(
    r'(<div class="output (?:stream|stderr|text_plain)[^"]*"><div class="highlight"><pre>)(.*?)(</pre>)', re.S
)
TABLE_ROW = re.compile(r"\S {2,}\S.*\S {2,}\S")  # three fields or more (the browser test's rule too)
RULE = re.compile(r"^\s*[-=─━_+| ]{8,}\s*$")  # ------  =====  ─────
TAG = re.compile(r"<[^>]+>")


def table_rows(lines: list[str]) -> set[int]:
    """Which of the plain-text ``lines`` of one output are rows of a table (see the module's doc)."""
    rows = {i for i, line in enumerate(lines) if TABLE_ROW.search(line)}
    if rows:
        rows |= {i for i, line in enumerate(lines) if RULE.match(line) and line.strip()}
    return rows


def mark_rows(pre: str) -> str:
    """The inner HTML of an output's <pre> with each table row in a ``span.sl-row``. A line whose
    markup is not self-contained (a highlighting span running over several lines) is left as it is."""
    lines = pre.split("\n")
    plain = [html.unescape(TAG.sub("", line)) for line in lines]
    rows = table_rows(plain)
    for i in rows:
        opened = len(re.findall(r"<span\b", lines[i])) - len(re.findall(r"</span>", lines[i]))
        if opened == 0 and plain[i].strip():
            # an empty highlighting span pygments puts first stays outside the row
            lead = "<span></span>" if lines[i].startswith("<span></span>") else ""
            lines[i] = f'{lead}<span class="sl-row">{lines[i][len(lead) :]}</span>'
    return "\n".join(lines)


def mark_table_rows(app, pagename, templatename, context, doctree) -> None:
    """Mark the rows of the tables a page's cells print (``html-page-context``: the page's body HTML)."""
    body = context.get("body")
    if body and "highlight" in body:
        context["body"] = OUTPUT_PRE.sub(lambda m: m.group(1) + mark_rows(m.group(2)) + m.group(3), body)


def setup(app):
    app.add_css_file("spectrallab.css", priority=900)  # after the theme's
    app.connect("config-inited", configure)
    app.connect("builder-inited", index_prose_only)
    app.connect("html-page-context", search_page_script)
    app.connect("html-page-context", mark_table_rows)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
