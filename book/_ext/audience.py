"""One source, two books: ``SPECTRALLAB_AUDIENCE=student`` builds the book without solutions.

Exercises and solutions are marked up once, with sphinx-exercise's directives (``exercise``,
``solution``, or the gated ``exercise-start``/``solution-start`` pairs that may enclose code
cells). The default (instructor) build shows every solution collapsed (``:class: dropdown``).
The student build removes every solution node from the document tree right after it is read —
text, code cells and their outputs — so no solution reaches the HTML, the search index or the
page sources. (sphinx-exercise's own ``hide_solutions`` drops a gated solution's opening
directive but leaves the code cells between it and ``solution-end`` on the page, so it is not
used.) The student build also ships no page sources and no download button.
"""

from __future__ import annotations

import os

AUDIENCES = ("instructor", "student")


def audience() -> str:
    chosen = os.environ.get("SPECTRALLAB_AUDIENCE", "").strip().lower() or "instructor"
    if chosen not in AUDIENCES:
        raise ValueError(f"SPECTRALLAB_AUDIENCE={chosen!r} is not one of {', '.join(AUDIENCES)}")
    return chosen


def configure(app, config) -> None:
    config.html_context = {**config.html_context, "spectrallab_audience": audience()}
    if audience() == "student":
        config.html_copy_source = False
        config.html_theme_options = {**config.html_theme_options, "use_download_button": False}


def remove_solutions(app, doctree) -> None:
    if audience() != "student":
        return
    from sphinx_exercise.nodes import solution_node, solution_start_node

    for node in list(doctree.findall(lambda n: isinstance(n, (solution_node, solution_start_node)))):
        node.parent.remove(node)


def setup(app):
    audience()  # fail early on a misspelt audience
    app.setup_extension("sphinx_exercise")
    app.connect("config-inited", configure)
    app.connect("doctree-read", remove_solutions, priority=900)  # after sphinx-exercise merges gated solutions
    return {"parallel_read_safe": True, "parallel_write_safe": True}
