"""sl.options_table: a method's options — default, allowed values, help — read from its declarations."""

from __future__ import annotations

import spectrallab as sl
from spectrallab.methods.lora import LoRA
from spectrallab.methods.options import Option, OptionTable


def test_lora_table_lists_every_option_with_default_range_and_help():
    t = sl.options_table("lora")
    assert isinstance(t, OptionTable) and [row["option"] for row in t.rows] == list(LoRA.options)
    rows = {row["option"]: row for row in t.rows}
    assert rows["rank"] == {
        "option": "rank",
        "default": "8",
        "allowed": "an int in [1, min(out, in)]",
        "help": "r, the rank of the update",
    }
    assert rows["alpha"]["allowed"] == "a number in (0, inf), or None (α = r, a scale of 1)"
    assert rows["dropout"]["allowed"] == "a number in [0, 1)"
    assert "'gaussian'" in rows["init"]["allowed"] and rows["init"]["default"] == "'default'"
    text = str(t)
    lines = text.splitlines()
    assert lines[0] == "options of 'lora'" and lines[1].split() == ["option", "default", "allowed", "help"]
    assert any(line.startswith("dropout  0.0") for line in lines) and len(lines) == 3 + len(LoRA.options)
    html = t._repr_html_()
    assert html.count("<tr>") == 1 + len(LoRA.options) and "<th style='text-align:left'>allowed</th>" in html
    assert sl.options_table(LoRA).rows == t.rows  # a Method subclass works as well as its name


def test_table_escapes_html_and_says_when_there_is_nothing():
    class Odd(LoRA):
        options = {"gate": Option(0.5, "g in <0, 1> & more", kind="float", low=0, high=1)}

    html = sl.options_table(Odd)._repr_html_()
    assert "g in &lt;0, 1&gt; &amp; more" in html and "<0, 1>" not in html
    assert str(sl.options_table("full")).splitlines() == ["options of 'full'", "(no options)"]
