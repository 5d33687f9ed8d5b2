"""The course kit: every chapter as a student notebook (no solutions, one stub per exercise) and an
instructor notebook (every solution), from book/_ext/handouts.py. No chapter is executed here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from solutions import handouts, read

from conftest import ROOT

CHAPTERS = sorted((ROOT / "book").glob("*.md"))
STUB = re.compile(r"^# Exercise (\d+) \((.+)\): write your solution here$")
RAW_MARKUP = re.compile(r"^\s*(`{3,}|:{3,})\{(exercise|solution)(-start|-end)?\}", re.M)
SCRIPT = ROOT / "book" / "_ext" / "handouts.py"


def lines_of(notebook) -> set[str]:
    return {line.strip() for cell in notebook.cells for line in cell.source.split("\n")}


def position(notebook, pattern: str) -> int:
    """Index of the first cell whose source matches ``pattern`` (a regex)."""
    return next(k for k, cell in enumerate(notebook.cells) if re.search(pattern, cell.source, re.M))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_notebook_has_no_solution_and_one_stub_per_exercise(chapter):
    solutions = read(chapter)
    notebook = handouts().student_notebook(chapter)
    nbformat.validate(notebook)
    present = lines_of(notebook)
    leaked = [line for line in solutions.distinctive(solutions.code + solutions.text) if line in present]
    assert not leaked, f"{chapter.stem}: the student notebook shows solution lines: {leaked[:5]}"
    stubs = [
        STUB.match(cell.source)
        for cell in notebook.cells
        if cell.cell_type == "code" and cell.source.startswith("# Exercise")
    ]
    assert all(stubs), (
        f"{chapter.stem}: malformed stub among {[c.source for c in notebook.cells if 'Exercise' in c.source]}"
    )
    numbered = [(int(m.group(1)), m.group(2)) for m in stubs]
    assert numbered == [(n, label) for n, label in enumerate(solutions.exercises, 1)], chapter.stem
    for number in range(1, len(solutions.exercises) + 1):  # each stub right after its exercise
        exercise = position(notebook, rf"^\*\*Exercise {number}\*\*")
        stub = position(notebook, rf"^# Exercise {number} \(")
        following = (
            [position(notebook, rf"^\*\*Exercise {number + 1}\*\*")] if number < len(solutions.exercises) else []
        )
        assert exercise < stub and all(stub < f for f in following), f"{chapter.stem}: stub {number} out of place"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert not RAW_MARKUP.search("\n".join(c.source for c in notebook.cells)), f"{chapter.stem}: raw directive markup"
    assert not re.search(r"\*\*Solution \d+\*\*", "\n".join(c.source for c in notebook.cells))
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_instructor_notebook_has_every_solution(chapter):
    solutions = read(chapter)
    notebook = handouts().instructor_notebook(chapter)
    nbformat.validate(notebook)
    present = lines_of(notebook)
    missing = [line for line in solutions.code + solutions.text if line not in present]
    assert not missing, f"{chapter.stem}: the instructor notebook lacks solution lines: {missing[:5]}"
    source = jupytext_code(chapter)
    assert [c.source for c in notebook.cells if c.cell_type == "code"] == source, "code cells changed"
    for number in range(1, len(solutions.exercises) + 1):
        assert position(notebook, rf"^\*\*Exercise {number}\*\*") <= position(notebook, rf"^\*\*Solution {number}\*\*")
    assert (
        len(re.findall(r"^\*\*Solution \d+\*\*", "\n".join(c.source for c in notebook.cells), re.M)) == solutions.count
    )
    assert not RAW_MARKUP.search("\n".join(c.source for c in notebook.cells)), f"{chapter.stem}: raw directive markup"
    assert all(c.outputs == [] for c in notebook.cells if c.cell_type == "code")
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def jupytext_code(chapter: Path) -> list[str]:
    import jupytext

    return [c.source for c in jupytext.read(chapter).cells if c.cell_type == "code"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_use_the_exercise_directives(chapter):
    """No chapter keeps the old markup: a numbered list under Exercises, `# Solution` hide-cells, dropdowns."""
    text = chapter.read_text()
    solutions = read(chapter)
    if "\n## Exercises\n" in text:
        assert solutions.exercises and all(solutions.exercises), f"{chapter.stem}: exercises without labels"
        assert solutions.count >= len(solutions.exercises), f"{chapter.stem}: an exercise without a solution"
        section = text.split("\n## Exercises\n", 1)[1].split("\n## ", 1)[0]
        assert not re.search(r"^\d+\. \*\*", section, re.M), f"{chapter.stem}: a numbered exercise list is left"
        assert "{dropdown}" not in section and "hide-cell" not in section, chapter.stem
    prefixes = {label.split("-", 1)[0] for label in solutions.exercises}
    assert len(prefixes) <= 1, f"{chapter.stem}: labels should share the chapter's prefix (<stem>-<slug>): {prefixes}"


def test_exercise_labels_are_unique_across_the_book():
    labels = [label for chapter in CHAPTERS for label in read(chapter).exercises]
    assert len(labels) == len(set(labels)), sorted(label for label in labels if labels.count(label) > 1)
    prefixes = {chapter.stem: {label.split("-", 1)[0] for label in read(chapter).exercises} for chapter in CHAPTERS}
    used = [prefix for values in prefixes.values() for prefix in values]
    assert len(used) == len(set(used)), f"two chapters share a label prefix: {prefixes}"


HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
# Tiny

"""
GOOD = (
    HEADER
    + """```{code-cell} ipython3
x = 1
```

## Exercises

```{exercise-start}
:label: tiny-one
```
**First.** Compute it.
```{exercise-end}
```

```{solution-start} tiny-one
:class: dropdown
```
Explain the distinctive first answer here.

```{code-cell} ipython3
distinctive_answer = x + 41
```

```{solution-end}
```

:::{exercise}
:label: tiny-two
**Second.** Think about it.
:::

:::{solution} tiny-two
:class: dropdown
The second answer is entirely in words.
:::

```{exercise-start}
:label: tiny-three
```
**Third.** Left open (no solution).
```{exercise-end}
```
"""
)


def chapter_file(tmp_path: Path, text: str, name: str = "tiny.md") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tiny_chapter_handouts(tmp_path):
    path = chapter_file(tmp_path, GOOD)
    student = handouts().student_notebook(path)
    instructor = handouts().instructor_notebook(path)
    student_text = "\n".join(c.source for c in student.cells)
    instructor_text = "\n".join(c.source for c in instructor.cells)
    assert [c.source for c in student.cells if c.cell_type == "code"] == [
        "x = 1",
        "# Exercise 1 (tiny-one): write your solution here",
        "# Exercise 2 (tiny-two): write your solution here",
        "# Exercise 3 (tiny-three): write your solution here",
    ]
    for secret in ("distinctive first answer", "distinctive_answer", "entirely in words"):
        assert secret not in student_text and secret in instructor_text
    assert "**Exercise 1** — **First.** Compute it." in student_text
    assert "**Exercise 2** — **Second.** Think about it." in instructor_text
    assert "**Solution 1**" in instructor_text and "**Solution 2**" in instructor_text
    assert "**Solution 3**" not in instructor_text
    assert not RAW_MARKUP.search(student_text) and not RAW_MARKUP.search(instructor_text)


@pytest.mark.parametrize(
    "broken, message",
    [
        (GOOD.replace("```{solution-end}\n```\n", ""), r"solution-start\} tiny-one.*has no \{solution-end\}"),
        (GOOD.replace("{solution} tiny-two", "{solution} tiny-twoo"), r"'tiny-twoo'.*names no exercise"),
        (
            GOOD.replace("```{exercise-end}\n```\n\n```{solution-start}", "```{solution-start}"),
            r"tiny-one.*has no \{exercise-end\} before the \{solution-start\}",
        ),
        (GOOD.rstrip("\n").rsplit("```{exercise-end}", 1)[0], r"has no \{exercise-end\}"),
        (GOOD.replace("```{solution-start} tiny-one", "```{solution-start}"), r"names no exercise"),
        (
            GOOD.replace("The second answer is entirely in words.\n:::", "The second answer is entirely in words."),
            r"never closed",
        ),
        (GOOD + "\n```{solution-end}\n```\n", r"\{solution-end\}.*without a \{solution-start\}"),
    ],
    ids=[
        "no-solution-end",
        "unknown-label",
        "exercise-not-ended",
        "no-exercise-end",
        "solution-without-label",
        "plain-solution-not-closed",
        "stray-solution-end",
    ],
)
def test_malformed_markup_is_a_clear_error(tmp_path, broken, message):
    path = chapter_file(tmp_path, broken)
    module = handouts()
    for make in (module.student_notebook, module.instructor_notebook):
        with pytest.raises(module.MarkupError, match=message) as error:
            make(path)
        assert str(path) in str(error.value)  # the message names the chapter


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_writes_both_folders_for_the_real_book(tmp_path):
    import yaml

    result = run_cli(tmp_path / "out")
    assert result.returncode == 0, result.stderr
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    stems = [Path(toc["root"]).name] + [Path(file).name for file in listed]
    assert [path.stem for path in handouts().toc_files(ROOT)] == stems  # every part, in order
    for audience in ("student", "instructor"):
        written = sorted(p.stem for p in (tmp_path / "out" / audience).glob("*.ipynb"))
        assert written == sorted(stems), audience
        for stem in stems:
            path = tmp_path / "out" / audience / f"{stem}.ipynb"
            assert f"wrote {path}" in result.stdout
            nbformat.validate(nbformat.read(path, as_version=4))
    lora = nbformat.read(tmp_path / "out" / "student" / "lora.ipynb", as_version=4)
    # Named as the numbered book names them: the first exercise of chapter N is Exercise N.1.
    number = handouts().chapter_numbers(ROOT)[ROOT / "book" / "lora.md"]
    assert number == stems.index("lora")
    assert any(c.source.startswith(f"# Exercise {number}.1 (lora-") for c in lora.cells)


def test_cli_reads_a_synthetic_toc_and_fails_clearly_on_bad_markup(tmp_path):
    book = tmp_path / "book"
    (book / "part").mkdir(parents=True)
    chapter_file(book, HEADER + "Intro.\n", "intro.md")
    chapter_file(book / "part", GOOD, "tiny.md")
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: One\n    chapters:\n      - file: part/tiny\n"
    )
    result = run_cli(tmp_path / "out", "--root", book)
    assert result.returncode == 0, result.stderr
    for audience in ("student", "instructor"):
        assert sorted(p.name for p in (tmp_path / "out" / audience).iterdir()) == ["intro.ipynb", "tiny.ipynb"]

    chapter_file(book / "part", GOOD.replace("```{solution-end}\n```\n", ""), "tiny.md")
    result = run_cli(tmp_path / "bad", "--root", book)
    assert result.returncode != 0
    assert "tiny.md" in result.stderr and "{solution-end}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()  # nothing half-written
