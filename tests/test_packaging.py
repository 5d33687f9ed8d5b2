"""The install story stays true: environment.yml matches pyproject.toml, the CPU torch pin fits."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT


def normalized(spec: str) -> str:
    req = Requirement(spec)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{re.sub(r'[-_.]+', '-', req.name).lower()}{extras}{req.specifier}"


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += [s for s in extra if not s.startswith("spectrallab")]  # `dev` only gathers the others
    return {normalized(s) for s in specs}


def environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {normalized(s) for s in pip if not s.startswith("-e")}


def test_environment_yml_and_pyproject_declare_the_same_dependencies():
    ours, conda = pyproject_requirements(), environment_requirements()
    assert conda == ours, f"only in environment.yml: {sorted(conda - ours)}; only in pyproject: {sorted(ours - conda)}"


def test_environment_yml_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip


def test_the_cpu_torch_pin_satisfies_the_declared_range():
    pin = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    torch_req = next(
        Requirement(s)
        for s in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if s.startswith("torch")
    )
    assert Version(pin) in torch_req.specifier


def test_ci_runs_both_readme_commands_the_book_in_the_cpu_profile():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands
    # The book a newcomer without a GPU builds (CI=true alone would pick the small `ci` profile).
    assert "SPECTRALLAB_PROFILE=cpu make book" in commands
    assert commands.index("make test") < commands.index("SPECTRALLAB_PROFILE=cpu make book")


def test_every_chapter_is_in_the_table_of_contents_and_vice_versa():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {toc["root"]} | {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    on_disk = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*.md")}
    assert listed == on_disk
