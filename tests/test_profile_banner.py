"""The profile banner (book/_ext/profile_banner.py): the parser of ``sl.pick`` calls, and the banner in
the built book."""

from __future__ import annotations

import re
import sys
from html import unescape as html_unescape
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import profile_banner as pb  # noqa: E402

CELL = """
import spectrallab as sl
STEPS = sl.pick(ci=200, cpu=1_000, gpu=5000)          # steps
m, n = sl.pick(ci=(120, 80), cpu=(400, 300), gpu=(1000, 800))
PERIOD, WARMUP = sl.pick(ci=12, cpu=40, gpu=200), sl.pick(ci=3, cpu=4, gpu=20)
r, p, trials = 10, 5, sl.pick(ci=3, cpu=5, gpu=10)
task = sl.task("chargpt", **sl.pick(ci=dict(context=32), cpu={}, gpu=None))
playground = slw.Playground(method="sst", steps=sl.pick(ci=40, cpu=600, gpu=3000))
BATCH = sl.pick(ci=16, cpu=32, gpu=64)  # the training batch
def grid_of(label):
    return sl.pick(ci=[1e-3], cpu=GRID[label], gpu=[10 ** e for e in (-3, -2)])
not_a_pick = other.pick(ci=1, cpu=2)  # not every profile: not a profile size
"""


def test_parser_names_every_pick_and_reads_its_values():
    sizes = {size.name: size for size in pb.picks_in(CELL)}
    assert list(sizes) == [
        "STEPS", "m, n", "PERIOD", "WARMUP", "trials", 'sl.task("chargpt") options',
        "slw.Playground(steps=…)", "BATCH", "grid_of",
    ]  # fmt: skip
    assert sizes["STEPS"].values == {"ci": "200", "cpu": "1_000", "gpu": "5000"}
    assert sizes["m, n"].values["gpu"] == "(1000, 800)"
    assert (sizes["PERIOD"].values["cpu"], sizes["WARMUP"].values["cpu"]) == ("40", "4")
    assert sizes["trials"].values == {"ci": "3", "cpu": "5", "gpu": "10"}
    assert sizes['sl.task("chargpt") options'].values == {"ci": "context=32", "cpu": "default", "gpu": "default"}
    assert sizes["grid_of"].values["gpu"] == "[10 ** e for e in (-3, -2)]"
    assert sizes["STEPS"].words == pb.WORDS["STEPS"]
    assert sizes["BATCH"].words == pb.WORDS["BATCH"]
    assert pb.tasks_in(CELL) == ["chargpt"]
    assert pb.picks_in("this is not python (") == []


def test_an_unknown_name_takes_its_comment_as_words():
    (size,) = pb.picks_in("CHUNK = sl.pick(ci=1, cpu=2, gpu=3)  # chunks per step\n")
    assert (size.name, size.words) == ("CHUNK", "chunks per step")


def test_library_task_sizes_follow_each_profile(monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_PROFILE", "cpu")
    row = pb.task_sizes("digits")
    assert row.values == {"ci": "128", "cpu": "256", "gpu": "512"}
    assert pb.os.environ["SPECTRALLAB_PROFILE"] == "cpu"  # restored after evaluating the other profiles


def chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / f"{entry['file']}.md" for part in toc["parts"] for entry in part["chapters"]]


@pytest.mark.parametrize("chapter", chapters(), ids=lambda path: path.stem)
def test_every_profile_size_in_the_book_is_named_in_words(chapter):
    for size in pb.chapter_sizes(chapter):
        assert size.words, (
            f"{chapter.name}: {size.name} = sl.pick(...) has no words (add it to WORDS in profile_banner.py)"
        )
        assert set(size.values) == set(pb.PROFILES)


def banner_problems(html_dir: Path, profile: str) -> list[str]:
    """What is wrong with the banners of a built book (an empty list when every page is right)."""
    problems = []
    for chapter in chapters():
        page = html_dir / "book" / f"{chapter.stem}.html"
        if not pb.has_code(chapter):
            continue
        html = page.read_text()
        opened = [m for m in re.finditer(r'<div class="profile-banner (warning|note) admonition"', html)]
        if len(opened) != 1:
            problems.append(f"{page.name}: {len(opened)} profile banners")
            continue
        kind = opened[0][1]
        end = html.find("its own execution cache", opened[0].start())
        body = html[opened[0].start() : end]
        if end < 0:
            problems.append(f"{page.name}: the banner does not say how to rebuild in another profile")
        if kind != ("warning" if profile == "ci" else "note"):
            problems.append(f"{page.name}: a {kind} box in the {profile} profile")
        named = f'<code class="docutils literal notranslate"><span class="pre">{profile}</span></code> profile'
        if f"come from the {named}" not in body:
            problems.append(f"{page.name}: the banner does not name the {profile} profile")
        title = html.index("<h1", html.index('<article class="bd-article"'))
        first_section = html.find("<h2", title)
        if not title < opened[0].start() < (first_section if first_section > 0 else len(html)):
            problems.append(f"{page.name}: the banner is not between the title and the first section")
        for size in pb.chapter_sizes(chapter):
            shown = re.sub(r"<[^>]+>", "", body)
            if f"({size.name})" not in html_unescape(shown):
                problems.append(f"{page.name}: the banner lacks {size.name}")
    return problems


def test_the_built_book_shows_the_profile_banner_on_every_chapter(built_book):
    assert banner_problems(built_book, "ci") == []
