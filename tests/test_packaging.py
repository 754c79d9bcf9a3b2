"""The wheel carries every package of the source tree and none of the study scripts."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in SETUP["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    return found


def test_every_package_folder_is_packaged():
    assert _packages_on_disk() == set(SETUP["packages"])


def test_studies_are_scripts_not_a_package():
    studies = ROOT / "benchmarks" / "studies"
    assert any(studies.glob("*.py"))
    assert not (studies / "__init__.py").exists()
    assert not any(p.startswith("edgeprune.benchmarks.studies") for p in SETUP["packages"])


def test_package_data_globs_match_files():
    for package, globs in SETUP["package-data"].items():
        folder = ROOT / SETUP["package-dir"][package]
        for g in globs:
            assert list(folder.glob(g)), f"{package}: {g} matches nothing"
