"""The README shows what ships: its recipe block is the shipped file; it links inside the repo."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_recipe_section_shows_the_shipped_digits_int8_verbatim() -> None:
    section = README.split("\n## The recipe\n", 1)[1]
    block = re.search(r"```yaml\n(.*?)```\n", section, re.S)
    assert block is not None, "no yaml block under '## The recipe'"
    assert block.group(1) == (REPO / "recipes/digits-int8.yaml").read_text(encoding="utf-8")


def test_readme_points_nowhere_outside_the_repository() -> None:
    assert not re.search(r"(^|[\s(`\[])\.\./", README), "README cites a path outside the repository"
