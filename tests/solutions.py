"""What the chapters' solutions contain, read straight from the .md sources (independently of
book/_ext/handouts.py, which the tests check against it).

A solution is the text between a ``{solution-start}`` and a ``{solution-end}`` fence (code cells
included), or the body of a plain ``{solution}`` directive. Its *distinctive* lines are the stripped
lines of at least ``MIN_LINE`` characters that do not also occur outside solutions: if one of them
is found somewhere, a solution leaked.
"""

from __future__ import annotations

import html
import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT

MIN_LINE = 12
MIN_RUN = 20  # prose is compared in runs of plain characters (the HTML renders markup differently)
MARKER = re.compile(r"^ {0,3}(`{3,}|:{3,})\{(exercise-start|exercise-end|solution-start|solution-end)\}")
PLAIN = re.compile(r"^ {0,3}(`{3,}|:{3,})\{(exercise|solution)\}")
EXERCISE_LABEL = re.compile(r"^:label:\s*(\S+)")
CODE_OPEN = re.compile(r"^ {0,3}(`{3,})(\{code-cell\}|python|py\b|ipython)")
OPTION = re.compile(r"^:[\w-]+:")
# Characters that Markdown turns into something else (markup, smart quotes, entities): prose runs
# are cut there. Runs with a link target are dropped (it is an attribute in the HTML).
CUT = re.compile(r"[$`*_\\{}\[\]<>&'\"|~^]|--|\.\.\.")
LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def handouts():
    """book/_ext/handouts.py as a module."""
    folder = str(ROOT / "book" / "_ext")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("handouts")


@dataclass
class Solutions:
    path: Path
    code: list[str] = field(default_factory=list)  # stripped code lines inside solutions
    text: list[str] = field(default_factory=list)  # stripped prose lines inside solutions
    outside: set[str] = field(default_factory=set)  # stripped lines outside solutions
    outside_text: str = ""  # everything outside solutions, whitespace collapsed
    exercises: list[str] = field(default_factory=list)  # exercise labels in order
    count: int = 0  # solutions (directives)

    def distinctive(self, lines, outside=None) -> list[str]:
        outside = self.outside if outside is None else outside
        # Not even *part* of a line outside the solutions: the student-book check finds a solution line
        # anywhere in a page's text, so a short one ("for s in SEEDS])") must not also be the tail of
        # an ordinary line ("    ... for s in SEEDS])"). Lines hold no newline: a hit in the joined
        # text lies inside one outside line.
        everything_outside = "\n".join(outside)
        return sorted({line for line in lines if len(line) >= MIN_LINE and line not in everything_outside})


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def read(path: Path) -> Solutions:
    """Split a chapter's lines into inside and outside solutions (see the module docstring)."""
    result = Solutions(path)
    lines = path.read_text().split("\n")
    outside_lines = []
    mode = None  # None | "gated" | fence string of a plain solution
    code_fence = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line) if code_fence is None else None
        if marker:  # a gated marker: the fence, its options, the closing fence
            fence, name = marker.groups()
            j, label = i + 1, ""
            while not _closes(lines[j], fence):
                if EXERCISE_LABEL.match(lines[j]):
                    label = EXERCISE_LABEL.match(lines[j]).group(1)
                j += 1
            if name == "exercise-start":
                result.exercises.append(label)
            elif name == "solution-start":
                mode = "gated"
                result.count += 1
            elif name == "solution-end":
                mode = None
            i = j + 1
            continue
        plain = PLAIN.match(line) if code_fence is None and mode is None else None
        if plain:
            fence, name = plain.groups()
            if name == "solution":
                mode = fence
                result.count += 1
            else:
                label = next(
                    (EXERCISE_LABEL.match(after) for after in lines[i + 1 : i + 4] if EXERCISE_LABEL.match(after)), None
                )
                result.exercises.append(label.group(1) if label else "")
                outside_lines.append(line)
            i += 1
            continue
        if mode not in (None, "gated") and code_fence is None and _closes(line, mode):
            mode = None
            i += 1
            continue
        inside = mode is not None
        if code_fence is None and CODE_OPEN.match(line):
            code_fence = CODE_OPEN.match(line).group(1)
        elif code_fence is not None and _closes(line, code_fence):
            code_fence = None
        elif inside and not OPTION.match(line.strip()) and line.strip():
            (result.code if code_fence else result.text).append(line.strip())
        if not inside:
            outside_lines.append(line)
        i += 1
    result.outside = {line.strip() for line in outside_lines}
    result.outside_text = " ".join(" ".join(outside_lines).split())
    return result


def prose_runs(line: str) -> list[str]:
    """The runs of plain characters in a prose line that survive rendering to HTML unchanged."""
    pieces = CUT.split(LIST_MARK.sub("", line))
    return [" ".join(p.split()) for p in pieces if len(p.strip()) >= MIN_RUN and "://" not in p]


def html_text(markup: str) -> str:
    """Text of an HTML document: tags removed, entities resolved (lines kept)."""
    markup = re.sub(r"<(script|style)\b.*?</\1>", "", markup, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", markup))
