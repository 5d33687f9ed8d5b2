"""A method's options, declared once: type, default, allowed range or choices, and a line of help.

Every method lists its keywords as :class:`Option` declarations::

    options = {
        "rank": Option(8, "r, the rank of the update", kind="int", low=1, high="min(out, in)"),
        "dropout": Option(0.0, "dropout on the adapter input", kind="float", low=0, high=1, high_open=True),
        "init": Option("default", "how A and B start", kind="choice", choices=lambda: sorted(LORA_INITS)),
    }

From the declarations alone come the validation of ``apply``'s keywords (once per ``apply``, before
any layer is looked at: :func:`validate`), the error messages (the layer, the value, the allowed
range — one wording for every method), the Playground's controls, the option tables of the docs
and the ``--option`` flags of a command line. A method's ``check()`` keeps only what depends on the
layer (a rank bounded by the layer's shape, a finite weight for an SVD) and ``check_options()`` what
ties options together (a warm-up shorter than its period).

This module imports nothing from the rest of the library: it is the bottom layer of ``methods``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("int", "float", "bool", "choice", "seed")


@dataclass(frozen=True)
class Option:
    """One keyword a method accepts.

    * ``default`` and ``help`` (one line, for tables and tooltips; paper symbols welcome).
    * ``kind``: ``"int"``, ``"float"`` (ints accepted), ``"bool"``, ``"choice"`` (one of ``choices``)
      or ``"seed"`` (an int; with ``none`` set, None draws one from torch's global generator).
    * ``low``/``high``: the allowed range of a number, inclusive unless ``low_open``/``high_open``;
      None is unbounded. ``high`` may be a *phrase* (``"min(out, in)"``) when the bound depends on the
      layer: it is shown in tables, and the method's ``check()`` enforces the whole range per layer,
      with that layer's numbers in the message (only the type is checked once).
    * ``choices``: the allowed values of a ``"choice"`` option, or a function returning them (a table
      that grows when an init is registered).
    * ``none``: when not None, None is allowed, and this phrase says what it means ("alpha = rank").
    * ``finite``: a float must be finite (the default).
    """

    default: Any
    help: str
    kind: str = "float"
    low: float | None = None
    high: float | str | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    none: str | None = None
    finite: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Option kind={self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "choice" and self.choices is None:
            raise ValueError("a 'choice' option needs choices=")

    # -- what is allowed, in words ----------------------------------------------------------------

    def allowed_choices(self) -> list[Any]:
        """The allowed values of a ``"choice"`` option (evaluated now: registered inits included)."""
        if self.kind != "choice":
            return []
        return list(self.choices() if callable(self.choices) else self.choices)

    def range_text(self, high: float | str | None = None) -> str:
        """``[1, inf)``, ``(0, 1]``, ... — ``high`` overrides the declared upper bound (a layer's limit)."""
        high = self.high if high is None else high
        low = "-inf" if self.low is None else _number(self.low)
        up = "inf" if high is None else (high if isinstance(high, str) else _number(high))
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or high is None else "]"
        return f"{left}{low}, {up}{right}"

    def describe(self) -> str:
        """What values are allowed, for tables and messages."""
        if self.kind == "bool":
            text = "True or False"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.allowed_choices())
        elif self.kind == "seed":
            text = "an int"
        else:
            text = f"{'an int' if self.kind == 'int' else 'a number'} in {self.range_text()}"
        return text + (f", or None ({self.none})" if self.none is not None else "")

    # -- validation -------------------------------------------------------------------------------

    def validate(self, where: str, name: str, value: Any) -> None:
        """Raise ``TypeError`` (wrong type) or ``ValueError`` (out of range, not a choice), naming
        ``where`` (the layer(s)), the option, the value and what is allowed."""
        if value is None and self.none is not None:
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
            return
        if self.kind == "choice":
            choices = self.allowed_choices()
            if not _is_in(value, choices):
                raise ValueError(f"{where}: {name}={value!r} is not one of {', '.join(repr(c) for c in choices)}")
            return
        if self.kind in ("int", "seed"):
            if isinstance(value, bool) or not isinstance(value, int):
                kind = "an int or None" if self.kind == "seed" and self.none is not None else "an int"
                tail = "" if self.kind == "seed" else f" in {self.range_text()}"
                raise TypeError(f"{where}: {name} must be {kind}{tail}, got {value!r}")
        else:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (self.finite and not math.isfinite(value))
            ):
                finite = "a finite number" if self.finite else "a number"
                raise TypeError(f"{where}: {name} must be {finite} in {self.range_text()}, got {value!r}")
        if isinstance(self.high, str):
            return  # the range depends on the layer: the method's check() states it with the layer's numbers
        if not self.contains(value):
            raise ValueError(f"{where}: {name}={value} is outside the allowed range {self.range_text()}")

    def contains(self, value: float) -> bool:
        """Is the number inside the declared range (a phrase bound is the layer's: not checked here)?"""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if isinstance(self.high, (int, float)) and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def _is_in(value: Any, choices: Iterable[Any]) -> bool:
    try:
        return any(value == c and type(value) is type(c) for c in choices)
    except Exception:  # an unhashable / odd object that cannot be compared: not a choice
        return False


def _number(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def where(layer_names: Sequence[str]) -> str:
    """``layer 'fc1'`` or ``layers 'fc1', 'fc2' and 3 more``: who an option error is about."""
    names = [n or "<model>" for n in layer_names]
    if len(names) == 1:
        return f"layer {names[0]!r}"
    shown = ", ".join(repr(n) for n in names[:3])
    return f"layers {shown}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def validate(declared: dict[str, Option], config: dict[str, Any], layer_names: Sequence[str]) -> None:
    """Check every value of ``config`` against its declaration (the first bad one raises)."""
    place = where(layer_names)
    for name, option in declared.items():
        option.validate(place, name, config[name])


def table(declared: dict[str, Option]) -> list[dict[str, str]]:
    """One row per option — name, default, allowed values, help — for docs and widgets."""
    return [
        {"option": name, "default": repr(o.default), "allowed": o.describe(), "help": o.help}
        for name, o in declared.items()
    ]


class OptionTable:
    """Rows of :func:`table` that show themselves: an HTML table in a notebook (``_repr_html_``), aligned
    text in a terminal (``str``). Columns: option, default, allowed, help. ``rows`` stays a list of dicts."""

    columns = ("option", "default", "allowed", "help")

    def __init__(self, rows: list[dict[str, str]], title: str | None = None):
        self.rows = rows
        self.title = title

    def __str__(self) -> str:
        cells = [list(self.columns)] + [[row[c] for c in self.columns] for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(([self.title] if self.title else []) + (lines if self.rows else ["(no options)"]))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{_html(row[c])}</td>" for c in self.columns) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption style='text-align:left'>{_html(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Options many methods share, declared once so they read the same everywhere.


def rank_option(default: int = 8, help: str = "r, the rank of the update") -> Option:
    return Option(default, help, kind="int", low=1, high="min(out, in)")


def alpha_option() -> Option:
    return Option(
        None, "α; the update is scaled by α/r", kind="float", low=0, low_open=True, none="α = r, a scale of 1"
    )


def dropout_option() -> Option:
    return Option(
        0.0, "dropout on the adapter's input (never on the frozen path)", kind="float", low=0, high=1, high_open=True
    )


__all__ = ["Option", "OptionTable", "validate", "where", "table", "rank_option", "alpha_option", "dropout_option"]
