"""Which recipe an output folder belongs to: the marker a run leaves there
(`.modelquant-run.json`: the recipe's name, file and content hash, and what the run published),
and the check that refuses to mix two recipes' runs in one folder.

A folder belongs to the recipe whose run left the marker. The same recipe is the same name or the
same file (an edited recipe, or one moved, is still the same recipe: its changed stages rerun);
a folder with another recipe's marker is refused unless `--force` (take it over) or `--resume`
(take it over and reuse whichever of its finished stages match by content). An empty folder, a
missing one, or one without a marker is used as it is."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import Recipe

MARKER = ".modelquant-run.json"


@dataclass(frozen=True)
class RecipeIdentity:
    """What names a recipe: its `name` (None when the file cannot be read) and its file."""

    name: str | None
    path: Path

    @classmethod
    def of(cls, path: Path, name: str | None) -> RecipeIdentity:
        return cls(name, path.resolve())

    def same_as(self, marker: dict[str, Any]) -> bool:
        if self.name is not None and marker.get("recipe") == self.name:
            return True
        return marker.get("recipe_path") == str(self.path)


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the recipe as resolved (`--set` overrides included)."""
    doc = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def peek_identity(recipe_path: Path) -> RecipeIdentity:
    """The identity of a recipe file read leniently, before it is validated."""
    from modelquant.pipeline.artifacts import peek_recipe

    raw = peek_recipe(recipe_path) or {}
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw["name"] else None
    return RecipeIdentity.of(recipe_path, name)


def read_marker(out_dir: Path | None) -> dict[str, Any] | None:
    """The marker of the run in `out_dir`, or None (no folder, no marker, or one unreadable)."""
    if out_dir is None or not out_dir.is_dir():
        return None
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("recipe"), str) else None


def refusal(out_dir: Path, marker: dict[str, Any]) -> UserError:
    return UserError(
        f"output folder {out_dir} holds a run of another recipe, '{marker.get('recipe')}' "
        f"({marker.get('recipe_path', '?')}); rerun with --force to overwrite it, or --resume to "
        "reuse its finished stages, or give --out another folder"
    )


def foreign_marker(
    out_dir: Path | None, identity: RecipeIdentity, *, force: bool, resume: bool
) -> dict[str, Any] | None:
    """The marker of another recipe's run in `out_dir` that `force`/`resume` take over, or None
    when the folder is this recipe's or nobody's. Refused (UserError) without them."""
    marker = read_marker(out_dir)
    if marker is None or identity.same_as(marker):
        return None
    if not (force or resume):
        assert out_dir is not None
        raise refusal(out_dir, marker)
    return marker


def remove_published(out_dir: Path, marker: dict[str, Any]) -> list[str]:
    """Remove the files another recipe's run published in `out_dir` (the names its marker lists,
    with their external data); nothing else. Returns the names removed."""
    removed = []
    for name in marker.get("artifacts", []):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            continue  # only plain names inside the folder
        for path in (out_dir / name, out_dir / f"{name}.data"):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


def marker_doc(
    identity: RecipeIdentity, recipe_hash: str, command: str, artifacts: list[str]
) -> dict[str, Any]:
    from modelquant import __version__

    return {
        "recipe": identity.name,
        "recipe_path": str(identity.path),
        "recipe_sha256": recipe_hash,
        "command": command,
        "modelquant_version": __version__,
        "artifacts": artifacts,
    }


def write_marker(out_dir: Path, doc: dict[str, Any]) -> None:
    from modelquant.pipeline.artifacts import write_atomic

    write_atomic(out_dir / MARKER, json.dumps(doc, indent=2) + "\n")
