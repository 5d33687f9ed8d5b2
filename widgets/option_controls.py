"""Controls for a method's options, built from its declarations (:class:`spectrallab.methods.options.Option`).

One control per option, chosen by its kind — a number box bounded by the declared range, a checkbox,
a dropdown of the allowed choices, a seed box — with the option's help as tooltip. An option that
may be None gets an "auto" checkbox beside its control, labelled with what None means (the
declaration's ``none`` phrase: "auto: α = r, a scale of 1"). Not None inside a dropdown: there
ipywidgets reads None as "nothing selected". Nothing here names a method: a widget reads
``method_class(name).options`` and asks for controls.
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W

from spectrallab.methods.options import Option

# Beyond any value a widget offers: the "unbounded" side of a bounded box. Finite on purpose: the
# front end parses the widget state as JSON, which has no Infinity.
INT_LIMIT = 10**9
FLOAT_LIMIT = 1e300


def declared(method_class: type) -> dict[str, Option]:
    """The method's option declarations (name → :class:`Option`)."""
    return dict(method_class.options)


def fits(option: Option, value: Any) -> bool:
    """Does ``value`` pass the declaration (type, range, choices)? A phrase bound is the layer's: not checked."""
    try:
        option.validate("", "", value)
    except (TypeError, ValueError):
        return False
    return True


def placeholder(option: Option) -> Any:
    """A value a control can show while its option is None ("auto"): the default, else one inside the range."""
    if option.default is not None:
        return option.default
    if option.kind == "bool":
        return False
    if option.kind == "choice":
        return option.allowed_choices()[0]
    if option.kind == "seed":
        return 0
    low = 0 if option.low is None else option.low
    high = option.high if isinstance(option.high, (int, float)) else None
    value = low + 1 if option.low_open or option.low is None else low
    if high is not None and not option.contains(value):
        value = (low + high) / 2
    return int(math.ceil(value)) if option.kind == "int" else float(value)


def int_bounds(option: Option) -> tuple[int, int]:
    """The inclusive [min, max] of an int option's number box (a phrase bound leaves the top open)."""
    low = -INT_LIMIT if option.low is None else math.floor(option.low) + 1 if option.low_open else math.ceil(option.low)
    if isinstance(option.high, (int, float)):
        high = math.ceil(option.high) - 1 if option.high_open else math.floor(option.high)
    else:
        high = INT_LIMIT
    return low, high


def tooltip(option: Option) -> str:
    return f"{option.help} — {option.describe()}"


def choice_pairs(option: Option) -> list[tuple[str, Any]]:
    """(label, value) pairs of a choice option."""
    return [(value if isinstance(value, str) else repr(value), value) for value in option.allowed_choices()]


def dropdown_options(option: Option) -> list[Any]:
    """What a Dropdown's ``options`` get: plain strings when every choice is one (so ``.options`` reads as
    the choices), else (label, value) pairs."""
    pairs = choice_pairs(option)
    return [value for _, value in pairs] if all(label is value for label, value in pairs) else pairs


def value_control(name: str, option: Option, value: Any, description: str | None = None) -> W.ValueWidget:
    """The control for one option holding ``value`` (a None-able number holds its placeholder instead)."""
    common = dict(description=description or name, tooltip=tooltip(option), style={"description_width": "initial"})
    shown = placeholder(option) if value is None else value
    if option.kind == "choice":
        return W.Dropdown(options=dropdown_options(option), value=shown, **common)
    if option.kind == "bool":
        return W.Checkbox(value=bool(shown), indent=False, **common)
    box = W.Layout(width="210px")
    if option.kind == "seed":
        return W.IntText(value=int(shown), layout=box, **common)
    if option.kind == "int":
        low, high = int_bounds(option)
        return W.BoundedIntText(value=int(shown), min=low, max=high, layout=box, **common)
    high = option.high if isinstance(option.high, (int, float)) else None
    if option.low is None and high is None:
        return W.FloatText(value=float(shown), step=None, layout=box, **common)
    # Bounds of the box are inclusive; an open end (dropout < 1) typed exactly is refused by the
    # declaration when the run is built, with the allowed range in the message.
    return W.BoundedFloatText(
        value=float(shown),
        step=None,
        layout=box,
        min=-FLOAT_LIMIT if option.low is None else float(option.low),
        max=FLOAT_LIMIT if high is None else float(high),
        **common,
    )


def needs_auto(option: Option) -> bool:
    """An option that may be None gets an "auto" checkbox."""
    return option.none is not None


def auto_checkbox(option: Option, value: Any) -> W.Checkbox:
    """The checkbox that says "None" for a None-able option: ``auto: <what None means>``."""
    return W.Checkbox(
        value=value is None,
        description=f"auto: {option.none}",
        indent=False,
        tooltip=f"None: {option.none}",
        layout=W.Layout(width="auto"),
    )


__all__ = [
    "declared",
    "fits",
    "placeholder",
    "int_bounds",
    "value_control",
    "needs_auto",
    "auto_checkbox",
    "choice_pairs",
    "dropdown_options",
    "tooltip",
]
