"""Handouts for a course: each chapter as a student notebook (no solutions) and an instructor notebook.

The chapters mark exercises and solutions up once, with sphinx-exercise's directives:

* ``exercise-start`` / ``exercise-end`` (gated) or a plain ``exercise`` directive, with ``:label:``;
* ``solution-start <label>`` / ``solution-end`` (gated: code cells may sit in between) or a plain
  ``solution <label>`` directive.

``instructor_notebook(chapter)`` is the chapter as a notebook with every solution in place;
``student_notebook(chapter)`` drops every solution (its text and its code cells) and puts one code
cell ``# Exercise N (label): write your solution here`` where the solution was. In both, the
directive fences become plain Markdown (``**Exercise 3** — …``, ``**Solution 3**``), since Jupyter
does not render MyST directives. Outputs are empty and the kernel is python3.

Command line (``make handouts``)::

    python book/_ext/handouts.py OUTDIR [--root BOOK_ROOT]

writes OUTDIR/student/<stem>.ipynb and OUTDIR/instructor/<stem>.ipynb for every file in the book's
_toc.yml, and exits with status 1 and a message naming the chapter on malformed markup (an
exercise or solution that is never closed, a solution whose label names no exercise, ...).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]
AUDIENCES = ("student", "instructor")
STUB = "# Exercise {number} ({label}): write your solution here"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# An opening fence: ``` or ::: (or longer), a {directive} name and its argument. Up to three spaces
# of indentation, as CommonMark allows.
DIRECTIVE = re.compile(r"^ {0,3}(?P<fence>`{3,}|:{3,})\{(?P<name>[A-Za-z][\w:-]*)\}[ \t]*(?P<arg>.*?)\s*$")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*?)\s*$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):(?:\s+(?P<value>.*?))?\s*$")
GATED = {"exercise-start", "exercise-end", "solution-start", "solution-end"}
# {numref}`exercise %s <label>`, {numref}`label`, {ref}`text <label>`, {ref}`label`
REFERENCE = re.compile(r"\{(?P<role>numref|ref)\}`(?:(?P<text>[^`<]*?)\s*<(?P<target>[^>`]+)>|(?P<label>[^`<>]+))`")


class MarkupError(ValueError):
    """Exercise/solution markup that cannot be turned into handouts (the message names the chapter)."""


@dataclass
class Exercise:
    number: int
    label: str | None
    at: str  # where it starts: "line N" of the chapter
    solved: bool = False
    chapter: int | None = None  # the chapter's number in a numbered book

    @property
    def name(self) -> str:
        """What the book calls it: "4.2" in chapter 4 of a numbered book (Sphinx numbers exercises
        per chapter there), else its number within the chapter."""
        return f"{self.chapter}.{self.number}" if self.chapter is not None else str(self.number)


@dataclass
class Chapter:
    """A chapter split into tokens: ("md", cell_index, line, in_solution), ("code", cell, in_solution),
    ("exercise", Exercise), ("exercise-end", Exercise), ("solution", label), ("break", cell): a "break"
    starts each chapter cell; "md" lines and code cells inside a solution have ``in_solution`` set."""

    path: Path
    notebook: nbformat.NotebookNode
    tokens: list = field(default_factory=list)
    exercises: list = field(default_factory=list)
    by_label: dict = field(default_factory=dict)


def _closes(line: str, char: str, length: int) -> bool:
    """A bare fence of ``char`` at least ``length`` long closes the block that ``char * length`` opened."""
    stripped = line.strip()
    return len(stripped) >= length and set(stripped) == {char} and len(line) - len(line.lstrip(" ")) <= 3


def _options(lines: list[str], start: int) -> tuple[dict, int]:
    """Directive options (``:key: value`` lines, or a ``---`` YAML block) from ``lines[start:]``;
    returns them and the index of the first line after them."""
    options, i = {}, start
    if i < len(lines) and lines[i].strip() == "---":
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "---"), None)
        if end is not None:
            options = yaml.safe_load("\n".join(lines[i + 1 : end])) or {}
            return {str(k): "" if v is None else str(v) for k, v in options.items()}, end + 1
    while i < len(lines) and (m := OPTION.match(lines[i])):
        options[m["key"]] = m["value"] or ""
        i += 1
    return options, i


def _cell_lines(text: str, cells) -> list[int]:
    """The line of the chapter file on which each cell's source starts (for error messages)."""
    starts, position = [], 0
    for cell in cells:
        found = text.find(cell.source, position) if cell.source else -1
        if found < 0:
            starts.append(text.count("\n", 0, position) + 1)
            continue
        starts.append(text.count("\n", 0, found) + 1)
        position = found + len(cell.source)
    return starts


def parse(chapter_path, chapter_number: int | None = None) -> Chapter:
    """Read a chapter (jupytext) and find its exercises and solutions; raise MarkupError on bad markup.

    ``chapter_number``: the chapter's number in the book (see :func:`chapter_numbers`), so that
    exercises are named as the book names them ("Exercise 4.2")."""
    path = Path(chapter_path)
    notebook = jupytext.read(path)
    chapter = Chapter(path, notebook)
    where = f"{path}"
    starts = _cell_lines(path.read_text(), notebook.cells)
    by_label: dict[str, Exercise] = {}
    solutions: list[tuple[str, str]] = []  # (label, location) of every solution, checked at the end
    gated_exercise: Exercise | None = None  # inside exercise-start ... exercise-end
    gated_solution: tuple[str, str] | None = None  # (label, location) inside solution-start ... solution-end
    tokens = chapter.tokens

    def new_exercise(label: str | None, here: str) -> Exercise:
        exercise = Exercise(len(chapter.exercises) + 1, label or None, here, chapter=chapter_number)
        if label:
            if label in by_label:
                raise MarkupError(f"{where}: two exercises are labelled {label!r} ({by_label[label].at} and {here})")
            by_label[label] = exercise
        chapter.exercises.append(exercise)
        return exercise

    def solution_of(label: str, here: str) -> str:
        if not label:
            raise MarkupError(
                f"{where}: the solution at {here} names no exercise (its directive needs the "
                "exercise's label as argument)"
            )
        solutions.append((label, here))
        return label

    def nothing_open(name: str, here: str, stack: list) -> None:
        """Raise if an exercise or solution is still open where {name} starts."""
        if gated_exercise is not None:
            raise MarkupError(
                f"{where}: {{exercise-start}} of exercise {gated_exercise.number} ({gated_exercise.label}) "
                f"(at {gated_exercise.at}) has no {{exercise-end}} before the {{{name}}} at {here}"
            )
        if gated_solution is not None:
            raise MarkupError(
                f"{where}: {{solution-start}} {gated_solution[0]} (at {gated_solution[1]}) has no "
                f"{{solution-end}} before the {{{name}}} at {here}"
            )
        for kind, _, _, payload, opened in reversed(stack):
            if kind in ("exercise", "solution"):
                what = (
                    f"exercise {payload.number} ({payload.label})"
                    if kind == "exercise"
                    else f"the solution of {payload!r}"
                )
                raise MarkupError(
                    f"{where}: {what} (at {opened}) is never closed: a {{{name}}} follows inside it at {here}"
                )

    for index, cell in enumerate(notebook.cells):
        tokens.append(("break", cell))
        if cell.cell_type != "markdown":
            if gated_exercise is not None:
                raise MarkupError(
                    f"{where}: exercise {gated_exercise.number} ({gated_exercise.label}) holds a "
                    f"code cell (at line {starts[index]}); put code in its solution, or close it with "
                    "{exercise-end} first"
                )
            tokens.append(("code", cell, gated_solution is not None))
            continue
        lines = cell.source.split("\n")
        # Open blocks in this cell: [kind, fence char, fence length, payload]; kind is "code" (opaque),
        # "container" (another directive: its content is Markdown), "exercise" or "solution" (plain).
        stack: list[list] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            here = f"line {starts[index] + i}"
            in_solution = gated_solution is not None or any(block[0] == "solution" for block in stack)
            top = stack[-1] if stack else None
            if top is not None and _closes(line, top[1], top[2]):
                stack.pop()
                if top[0] == "exercise":
                    tokens.append(("exercise-end", top[3]))
                elif top[0] != "solution":
                    tokens.append(("md", index, line, in_solution))
                i += 1
                continue
            if top is not None and top[0] == "code":
                tokens.append(("md", index, line, in_solution))
                i += 1
                continue
            directive = DIRECTIVE.match(line)
            if directive:
                name, arg, fence = directive["name"], directive["arg"], directive["fence"]
                options, body = _options(lines, i + 1)
                if name in GATED:
                    if name.endswith("-start"):
                        nothing_open(name, here, stack)
                    if stack:
                        raise MarkupError(
                            f"{where}: {{{name}}} at {here} sits inside a {{{stack[-1][3]}}} "
                            "directive; gated markers belong at the top level"
                        )
                    if body >= len(lines) or not _closes(lines[body], fence[0], len(fence)):
                        raise MarkupError(
                            f"{where}: {{{name}}} at {here} is not closed right after its "
                            f"options (expected a line {fence})"
                        )
                    i = body + 1
                    if name == "exercise-start":
                        gated_exercise = new_exercise(options.get("label", ""), here)
                        tokens.append(("exercise", gated_exercise))
                    elif name == "exercise-end":
                        if gated_exercise is None:
                            raise MarkupError(f"{where}: {{exercise-end}} at {here} without an {{exercise-start}}")
                        tokens.append(("exercise-end", gated_exercise))
                        gated_exercise = None
                    elif name == "solution-start":
                        gated_solution = (solution_of(arg, here), here)
                        tokens.append(("solution", arg))
                    else:
                        if gated_solution is None:
                            raise MarkupError(f"{where}: {{solution-end}} at {here} without a {{solution-start}}")
                        gated_solution = None
                    continue
                if name == "exercise":
                    nothing_open(name, here, stack)
                    exercise = new_exercise(options.get("label", ""), here)
                    stack.append(["exercise", fence[0], len(fence), exercise, here])
                    tokens.append(("exercise", exercise))
                    i = body
                    continue
                if name == "solution":
                    nothing_open(name, here, stack)
                    stack.append(["solution", fence[0], len(fence), solution_of(arg, here), here])
                    tokens.append(("solution", arg))
                    i = body
                    continue
                stack.append(["container", fence[0], len(fence), name, here])
                tokens.append(("md", index, line, in_solution))
                i += 1
                continue
            plain = FENCE.match(line)
            if plain and not (plain["fence"][0] == ":" and not plain["info"]):
                stack.append(["code", plain["fence"][0], len(plain["fence"]), None, here])
            tokens.append(("md", index, line, in_solution))
            i += 1
        for kind, _, _, payload, opened in stack:
            if kind == "exercise":
                raise MarkupError(f"{where}: exercise {payload.number} ({payload.label}) at {opened} is never closed")
            if kind == "solution":
                raise MarkupError(f"{where}: the solution of {payload!r} at {opened} is never closed")

    if gated_exercise is not None:
        raise MarkupError(
            f"{where}: {{exercise-start}} of exercise {gated_exercise.number} ({gated_exercise.label}) "
            f"at {gated_exercise.at} has no {{exercise-end}}"
        )
    if gated_solution is not None:
        raise MarkupError(
            f"{where}: {{solution-start}} {gated_solution[0]} at {gated_solution[1]} has no {{solution-end}}"
        )
    for label, here in solutions:
        if label not in by_label:
            known = ", ".join(sorted(by_label)) or "none"
            raise MarkupError(
                f"{where}: the solution at {here} is for {label!r}, which names no exercise "
                f"in this chapter (exercise labels: {known})"
            )
        by_label[label].solved = True
    chapter.by_label = by_label
    return chapter


def _heading(exercise: Exercise) -> str:
    return f"**Exercise {exercise.name}**"


def _references(line: str, by_label: dict) -> str:
    """References to this chapter's exercises as plain text (Jupyter renders no MyST roles)."""

    def plain(match):
        label = (match["target"] or match["label"]).strip()
        if label not in by_label:
            return match[0]
        number, text = by_label[label].name, match["text"]
        if text is None:
            return f"Exercise {number}"
        return text.replace("%s", number) if match["role"] == "numref" else text

    return REFERENCE.sub(plain, line) if "}`" in line else line


def _starts_paragraph(line: str) -> bool:
    """Whether ``**Exercise N** — `` can be put in front of this line without breaking its markup."""
    stripped = line.lstrip()
    return bool(stripped) and not re.match(r"([-+*] |\d+[.)] |#|>|\$\$|\||`{3}|~{3}|:{3}|<|\\\[)", stripped)


def _render(chapter: Chapter, audience: str) -> nbformat.NotebookNode:
    if audience not in AUDIENCES:
        raise ValueError(f"audience {audience!r} is not one of {', '.join(AUDIENCES)}")
    student = audience == "student"
    notebook = copy.deepcopy(chapter.notebook)
    cells: list = []
    lines: list[str] = []
    template = None  # the chapter cell whose markdown is being collected
    pending: Exercise | None = None  # an exercise heading waiting for its first line
    stubbed: set[int] = set()

    def flush():
        nonlocal lines
        if pending is not None:
            emit_heading()
        text = "\n".join(lines).strip("\n")
        if text.strip():
            cell = nbformat.v4.new_markdown_cell(text)
            if template is not None and not any(c.get("_from") is template for c in cells):
                cell.metadata = copy.deepcopy(template.get("metadata", {}))
            cell["_from"] = template
            cells.append(cell)
        lines = []

    def emit_heading():
        nonlocal pending
        lines.extend([_heading(pending), ""])
        pending = None

    def stub(exercise: Exercise):
        if exercise.number in stubbed:
            return
        stubbed.add(exercise.number)
        flush()
        label = exercise.label or f"exercise {exercise.name}"
        cells.append(nbformat.v4.new_code_cell(STUB.format(number=exercise.name, label=label)))

    for token in chapter.tokens:
        kind = token[0]
        if kind == "break":
            flush()
            template = token[1]
        elif kind == "md":
            _, _, line, in_solution = token
            if student and in_solution:
                continue
            line = _references(line, chapter.by_label)
            if pending is not None:
                if not line.strip():
                    continue
                if _starts_paragraph(line):
                    line = f"{_heading(pending)} — {line.lstrip()}"
                    pending = None
                else:
                    emit_heading()
            lines.append(line)
        elif kind == "code":
            _, cell, in_solution = token
            if student and in_solution:
                continue
            flush()
            code = copy.deepcopy(cell)
            code.outputs, code.execution_count = [], None
            cells.append(code)
        elif kind == "exercise":
            if lines and lines[-1].strip():
                lines.append("")
            pending = token[1]
        elif kind == "exercise-end":
            if pending is not None:
                emit_heading()
            if student and not token[1].solved:
                stub(token[1])
        elif kind == "solution":
            exercise = chapter.by_label[token[1]]
            if student:
                stub(exercise)
            else:
                if lines and lines[-1].strip():
                    lines.append("")
                lines.extend([f"**Solution {exercise.name}**", ""])
    flush()
    for cell in cells:
        cell.pop("_from", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notebook.cells = cells
    notebook.metadata.pop("jupytext", None)
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    notebook.metadata.setdefault("language_info", {"name": "python"})
    notebook.nbformat, notebook.nbformat_minor = 4, 5
    for number, cell in enumerate(notebook.cells):  # stable ids: the same chapter gives the same file
        cell["id"] = f"cell-{number}"
    nbformat.validate(notebook)
    return notebook


def instructor_notebook(chapter_path, chapter_number: int | None = None) -> nbformat.NotebookNode:
    """The chapter as a notebook with every solution in place (under **Solution N**); no outputs."""
    return _render(parse(chapter_path, chapter_number), "instructor")


def student_notebook(chapter_path, chapter_number: int | None = None) -> nbformat.NotebookNode:
    """The chapter as a notebook without solutions: one stub code cell per exercise; no outputs."""
    return _render(parse(chapter_path, chapter_number), "student")


def toc_files(root) -> list[Path]:
    """The chapter files of a Jupyter Book's _toc.yml (root first, then every chapter/section/part)."""
    root = Path(root)
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    if "root" in toc:
        entries.append(toc["root"])
    walk({k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")})
    files = []
    for entry in entries:
        path = root / entry
        candidates = (
            [path] if path.suffix in (".md", ".ipynb") else [path.with_suffix(".md"), path.with_suffix(".ipynb")]
        )
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise MarkupError(f"_toc.yml lists {entry!r}, but none of {', '.join(map(str, candidates))} exists")
        files.append(found)
    return files


def chapter_numbers(root) -> dict[Path, int | None]:
    """Each toc file's chapter number as the book shows it: with ``defaults: numbered: true`` in
    ``_toc.yml`` the chapters after the root are numbered 1, 2, ... in order (the root is not),
    across parts, except in a part that says ``numbered: false`` (the reference pages); otherwise no
    file has a number."""
    root = Path(root)
    files = toc_files(root)
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    if not (toc.get("defaults") or {}).get("numbered"):
        return {path: None for path in files}
    unnumbered = {
        str(entry["file"])
        for part in toc.get("parts", []) or []
        if part.get("numbered") is False
        for entry in part.get("chapters", []) or []
    }
    numbers, count = {}, 0
    for index, path in enumerate(files):
        entry = str(path.relative_to(root).with_suffix(""))
        if index == 0 or entry in unnumbered:
            numbers[path] = None
        else:
            count += 1
            numbers[path] = count
    return numbers


def write_handouts(outdir, root=ROOT) -> list[Path]:
    """Write OUTDIR/{student,instructor}/<stem>.ipynb for every chapter in ROOT/_toc.yml."""
    outdir = Path(outdir)
    chapters = toc_files(root)
    stems = [c.stem for c in chapters]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise MarkupError(f"two chapters share the name {', '.join(duplicates)}: their handouts would collide")
    numbers = chapter_numbers(root)
    rendered = [
        (c, {a: _render(parse(c, numbers[c]), a) for a in AUDIENCES}) for c in chapters
    ]  # all parsed before writing
    written = []
    for chapter, notebooks in rendered:
        for audience, notebook in notebooks.items():
            target = outdir / audience / f"{chapter.stem}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, target)
            written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write student and instructor notebooks for every chapter.")
    parser.add_argument("outdir", help="folder for student/ and instructor/")
    parser.add_argument(
        "--root", default=str(ROOT), help="the book's root (where _toc.yml is); default: this repository"
    )
    args = parser.parse_args(argv)
    try:
        written = write_handouts(args.outdir, args.root)
    except (MarkupError, OSError, yaml.YAMLError) as error:
        print(f"handouts: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} notebooks in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
