"""A banner at the top of every chapter: which profile produced its numbers, and what the others change.

Every experiment in the book is sized through ``sl.pick(ci=..., cpu=..., gpu=...)`` (see
``spectrallab.profiles``). The execution cache is per profile (``book/_ext/execution_cache.py``),
so the outputs on a page are always those of the build's profile, :func:`spectrallab.profiles.profile`.
This extension reads each chapter's code cells (with :mod:`ast`, executing nothing), collects its
``pick`` calls and the library tasks it builds (``sl.task("chargpt", ...)``, whose sizes follow the
profile as well), and puts an admonition under the chapter's title:

* which profile this build ran (a warning box for ``ci``: toy sizes, so numbers are noisy and small);
* a table of the chapter's profile-dependent sizes, ci / cpu / gpu, the active column marked;
* how to rebuild the book in another profile.

Nothing is added to the code cells, so adding or changing the banner re-executes nothing.
"""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes

PROFILES = ("ci", "cpu", "gpu")
WHAT = {
    "ci": "toy sizes that run in under a minute a chapter on 2 CPU cores (the test suite's profile)",
    "cpu": "a laptop without a GPU: at most 3 minutes a chapter, 20 minutes for the book, on 2 cores",
    "gpu": "one GPU: at most 5 minutes a chapter, sizes closer to the papers'",
}

# What each sized name means, in words. A name missing here falls back to its line's comment; the
# test (tests/test_profile_banner.py) requires every pick in the book to have words one way or the other.
WORDS = {
    "STEPS": "training steps per run",
    "steps": "training steps",
    "slw.Playground(steps=…)": "the Playground's step budget",
    "steps_teacher": "training steps on the low-rank teacher",
    "steps_mlp": "training steps of the MLP",
    "steps_gpt": "training steps of the tiny GPT",
    "PRETRAIN_STEPS": "pre-training steps of the base model",
    "SEEDS": "random seeds (runs per configuration)",
    "BATCH": "batch size (sequences per step)",
    "VAL_BATCHES": "validation batches per score",
    "EVAL_EVERY": "steps between evaluations",
    "GAP": "steps between GaLore's projection updates (T)",
    "T": "steps between ReLoRA's merges and resets",
    "RESTART_WARMUP": "warm-up steps after each ReLoRA restart",
    "m, n": "size m × n of the example matrix",
    "mr, nr": "size of the matrix for the randomized SVD",
    "trials": "trials per randomized-SVD setting",
    "SIZE": "tiny GPT: text length and shape",
    "TASK_SIZE": "tiny GPT: text length and shape",
    "LR_GRID": "learning rates swept",
    "EARLY": "steps of the early-curve comparison",
    "R0": "rank of the placement comparison",
    "PLACEMENT_SEEDS": "seeds of the placement comparison",
    "BIG_BATCH": "the large batch of the batch-size experiment",
    "BATCH_SEEDS": "seeds of the batch-size experiment",
    "PERIOD": "steps between SST's resamplings",
    "WARMUP": "warm-up steps after each resampling",
    "RANK": "rank r",
    "SST_PERIOD, SST_WARMUP": "SST's resampling period and warm-up (steps)",
    "GRID_SCALE": "learning-rate grid (multiples of the base rate)",
    "EMBED_STEPS": "steps of the tree-embedding demo",
    "SIZES": "graph sizes (features, nodes)",
    "DIMS": "embedding dimensions swept",
    "SWEEP_SEEDS": "seeds of the dimension sweep",
    "SWEEP_STEPS": "steps per run of the dimension sweep",
    "CLAIM_STEPS": "training steps of the claim check",
    "SCALE_STEPS": "training steps of the scaling comparison",
    "task.batch_size": "batch size (sequences per step)",
    "grid_of": "learning rates swept per method",
    'sl.task("chargpt") options': "tiny GPT: this chapter's own sizes",
}
# Names of the library's own profile-dependent task sizes (spectrallab.tasks.profile_defaults).
TASK_WORDS = {
    "digits": "digits MLP: hidden width",
    "chargpt": "tiny GPT, the library's defaults (a chapter's own sizes override them)",
}


@dataclass
class Size:
    """One profile-dependent size: its name in the code, in words, and its value (as code) per profile."""

    name: str
    words: str
    values: dict  # profile -> source text
    line: int = 0


def _is_pick(call: ast.AST) -> bool:
    if not isinstance(call, ast.Call):
        return False
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr == "pick") or (
        isinstance(func, ast.Name) and func.id == "pick"
    )


def _target_text(target: ast.AST) -> str:
    if isinstance(target, ast.Tuple):
        return ", ".join(_target_text(element) for element in target.elts)
    return ast.unparse(target)


def _name_of(pick: ast.Call, parents: dict) -> str:
    """What the code calls the value a pick chooses: the variable, the keyword, or the function."""
    child, node = pick, parents.get(pick)
    element = None  # the element of a tuple the pick sits in, directly
    while node is not None:
        if isinstance(node, ast.Tuple) and element is None:
            element = child
        if isinstance(node, ast.Assign):
            target, value = node.targets[0], node.value
            # PERIOD, WARMUP = sl.pick(...), sl.pick(...) and r, p, trials = 10, 5, sl.pick(...): each
            # pick names its own element.
            if (
                isinstance(target, ast.Tuple)
                and isinstance(value, ast.Tuple)
                and element in value.elts
                and len(target.elts) == len(value.elts)
            ):
                return _target_text(target.elts[value.elts.index(element)])
            return _target_text(target)
        if isinstance(node, ast.keyword) and node.arg is not None:  # f(..., steps=sl.pick(...))
            return f"{ast.unparse(parents[node].func)}({node.arg}=…)"
        if isinstance(node, ast.keyword) and node.arg is None:  # f(..., **sl.pick(...))
            call = parents[node]
            first = call.args[0] if call.args and isinstance(call.args[0], ast.Constant) else None
            prefix = ast.unparse(call.func)
            return f"{prefix}({first.value!r}) options".replace("'", '"') if first else f"{prefix} options"
        if isinstance(node, ast.FunctionDef):
            return node.name
        child, node = node, parents.get(node)
    return "value"


def _comment(lines: list[str], lineno: int) -> str:
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    if "#" not in line:
        return ""
    return line.split("#", 1)[1].strip()


def _value_text(source: str, value: ast.AST) -> str:
    """A pick's value as a reader reads it: ``dict(a=1)`` and ``{"a": 1}`` as ``a=1``, ``{}`` and
    ``None`` as the default they stand for, anything else as its code."""
    if isinstance(value, ast.Constant) and value.value is None:
        return "default"
    if isinstance(value, ast.Dict) and not value.keys:
        return "default"
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict" and not value.args:
        return ", ".join(f"{kw.arg}={ast.get_source_segment(source, kw.value)}" for kw in value.keywords)
    if isinstance(value, ast.Dict) and all(isinstance(key, ast.Constant) for key in value.keys):
        return ", ".join(
            f"{key.value}={ast.get_source_segment(source, item)}" for key, item in zip(value.keys, value.values)
        )
    return ast.get_source_segment(source, value) or ast.unparse(value)


def picks_in(source: str) -> list[Size]:
    """The ``pick`` calls in one code cell's source, in order (a cell that does not parse gives none)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not _is_pick(node):
            continue
        values = {kw.arg: _value_text(source, kw.value) for kw in node.keywords}
        if set(values) != set(PROFILES):
            continue
        name = _name_of(node, parents)
        found.append(Size(name, WORDS.get(name) or _comment(lines, node.lineno), values, node.lineno))
    return sorted(found, key=lambda size: size.line)


def tasks_in(source: str) -> list[str]:
    """The library tasks a cell builds by name (``sl.task("chargpt", ...)``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "task"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


@contextmanager
def _as_profile(name: str):
    """Evaluate the library's defaults as another profile would (the build's process only; no kernel
    starts while this is active, and the variable is restored)."""
    before = os.environ.get("SPECTRALLAB_PROFILE")
    os.environ["SPECTRALLAB_PROFILE"] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPECTRALLAB_PROFILE"]
        else:
            os.environ["SPECTRALLAB_PROFILE"] = before


def _format_value(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={item:_}" if isinstance(item, int) else f"{key}={item}" for key, item in value.items())
    return f"{value:_}" if isinstance(value, int) else str(value)


def task_sizes(task: str) -> Size | None:
    """The library's profile-dependent defaults of a task, as a row (only the keys that differ)."""
    from spectrallab.tasks import profile_defaults

    per = {}
    for name in PROFILES:
        with _as_profile(name):
            per[name] = profile_defaults(task)
    keys = [key for key in per["ci"] if len({repr(per[p].get(key)) for p in PROFILES}) > 1]
    if not keys or task not in TASK_WORDS:
        return None
    values = {p: _format_value({key: per[p].get(key) for key in keys}) for p in PROFILES}
    if len(keys) == 1:
        values = {p: _format_value(per[p][keys[0]]) for p in PROFILES}
    return Size(f'sl.task("{task}")', TASK_WORDS[task], values)


def chapter_sizes(path: Path) -> list[Size]:
    """Every profile-dependent size of a chapter (a jupytext MyST file): its picks, then its tasks'."""
    import jupytext

    notebook = jupytext.read(path)
    sizes, tasks = [], []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        sizes.extend(picks_in(cell.source))
        tasks.extend(task for task in tasks_in(cell.source) if task not in tasks)
    for task in tasks:
        row = task_sizes(task)
        if row is not None:
            sizes.append(row)
    return sizes


def has_code(path: Path) -> bool:
    import jupytext

    return any(cell.cell_type == "code" for cell in jupytext.read(path).cells)


# --- docutils nodes ---------------------------------------------------------------------------------


def _text_paragraph(*parts) -> nodes.paragraph:
    """A paragraph from strings (plain text) and ("code", text) / ("strong", text) pairs."""
    paragraph = nodes.paragraph()
    for part in parts:
        if isinstance(part, str):
            paragraph += nodes.Text(part)
        elif part[0] == "code":
            paragraph += nodes.literal(text=part[1])
        else:
            paragraph += nodes.strong(text=part[1])
    return paragraph


def _table(sizes: list[Size], active: str) -> nodes.table:
    headers = ["size (name in the code)"] + [f"{p} (this page)" if p == active else p for p in PROFILES]
    table = nodes.table(classes=["profile-sizes"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in (4, 2, 2, 2):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for text in headers:
        row += nodes.entry("", nodes.paragraph(text=text))
    head += row
    group += head
    body = nodes.tbody()
    for size in sizes:
        row = nodes.row()
        row += nodes.entry("", _text_paragraph(size.words, " (", ("code", size.name), ")"))
        for p in PROFILES:
            value = nodes.literal(text=size.values[p])
            cell = nodes.paragraph("", "", nodes.strong("", "", value) if p == active else value)
            row += nodes.entry("", cell, classes=["profile-active"] if p == active else [])
        body += row
    group += body
    return table


def banner(sizes: list[Size], active: str) -> nodes.admonition:
    """The admonition: a warning for the toy ``ci`` profile, a note otherwise."""
    box = nodes.admonition(classes=["profile-banner", "warning" if active == "ci" else "note"])
    box["profile"] = active
    box += nodes.title(
        "",
        "",
        nodes.Text("The numbers on this page come from the "),
        nodes.literal(text=active),
        nodes.Text(" profile"),
    )
    box += _text_paragraph(
        "This build ran in the ",
        ("code", active),
        f" profile: {WHAT[active]}. ",
        *(
            (
                "Curves are short and noisy, and a claim check may go either way at this size; "
                "read the numbers as a demonstration of the method, not as a measurement of it.",
            )
            if active == "ci"
            else ()
        ),
    )
    if sizes:
        box += _text_paragraph("What the profiles change on this page:")
        box += _table(sizes, active)
    else:
        box += _text_paragraph(
            "This page's code sets no size of its own; the library's defaults it uses (task sizes, "
            "the Playground's step budget) follow the profile."
        )
    others = [p for p in PROFILES if p != active]
    box += _text_paragraph(
        "To see this page at another size, rebuild the book in that profile: ",
        ("code", f"SPECTRALLAB_PROFILE={others[0]} make book"),
        " or ",
        ("code", f"SPECTRALLAB_PROFILE={others[1]} make book"),
        " (each profile keeps its own execution cache, so a page never shows another profile's outputs).",
    )
    return box


def add_banner(app, doctree) -> None:
    docname = app.env.docname
    if docname == app.config.root_doc:
        return
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".md" or not has_code(path):
        return
    from spectrallab.profiles import profile

    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    title = next((i for i, child in enumerate(section.children) if isinstance(child, nodes.title)), -1)
    section.insert(title + 1, banner(chapter_sizes(path), profile()))


CSS = Path(__file__).with_name("profile_banner.css")


def copy_css(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / CSS.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(CSS.read_text())


def setup(app):
    app.connect("doctree-read", add_banner)
    app.add_css_file(CSS.name)
    app.connect("build-finished", copy_css)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
