"""The output folder: the one place that writes into it (temp name, then rename; rank 0 only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from modelquant.errors import UserError
from modelquant.pipeline import ownership

REPORT_FILES = ("report.json", "report.md", "report.html", "junit.xml")
"""Every report file a run can write: removed first thing, so no stale success outlives a rerun."""


def process_rank() -> int:
    """This process's rank under torchrun (RANK), 0 when run alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temp name beside `path` to write to; renamed to `path` when the block ends normally and
    removed when it does not (an error, Ctrl-C): never a half-written file, never a stray one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp name in the same folder, then rename: never a half-written file."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def default_out_dir(name: str, configured: Path | None) -> Path:
    return (configured or Path("runs") / name).absolute()


def peek_recipe(recipe_path: Path) -> dict[str, Any] | None:
    """The recipe file's document read leniently, before it is validated: None where it cannot be
    read or is no mapping (its own error, raised when the recipe is loaded, says why)."""
    try:
        raw = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


def peek_out_dir(recipe_path: Path, out: Path | None) -> Path | None:
    """The output folder a run of this recipe file would use, read leniently before the recipe is
    validated (so that even a run that fails on a bad recipe removes the old report)."""
    if out is not None:
        return out.absolute()
    raw = peek_recipe(recipe_path)
    if raw is None:
        return None
    output = raw.get("output") or {}
    configured = output.get("dir") if isinstance(output, dict) else None
    name = raw.get("name")
    if configured:
        try:
            return Path(configured).absolute()
        except TypeError:  # `dir: 3`: the recipe's validation says so
            return None
    if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
        return default_out_dir(name, None)
    return None


def clear_reports(out_dir: Path | None) -> None:
    """Remove the report files of an earlier run in `out_dir` (nothing else)."""
    if out_dir is None or not out_dir.is_dir() or process_rank() != 0:
        return
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)


class Artifacts:
    """What a run publishes in its output folder, and under which names."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.cache_dir = out_dir / ".cache"
        self.writes = process_rank() == 0
        self.keeps_reports = False
        """True for runs that write no report (analysis): an earlier run's report stays."""
        self.published: dict[str, str] = {}
        """Role (baseline, stage2.quantize, variant.npu, compressed, report.json, ...) -> name."""
        self.identity: ownership.RecipeIdentity | None = None
        """The recipe this run is of; with it, `prepare` checks and marks who owns the folder."""
        self.recipe_hash = ""
        self.command = "compress"
        self.take_over = False
        """--force / --resume: a folder holding another recipe's run is taken over."""
        self.previous: dict[str, Any] | None = None
        """The marker an earlier run left in the folder (None: no earlier run)."""

    def prepare(self) -> None:
        """Create the output folder; a path that is a file or cannot be written is bad input."""
        if not self.writes:
            return
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"output folder {self.out_dir} is a file; give --out a folder")
        foreign = None
        if self.identity is not None:
            foreign = ownership.foreign_marker(
                self.out_dir, self.identity, force=self.take_over, resume=False
            )
            self.previous = ownership.read_marker(self.out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".modelquant-write-test"
            try:
                probe.write_text("")
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UserError(
                f"cannot write to output folder {self.out_dir} ({reason}); give --out a folder "
                "you can write to"
            ) from None
        if foreign is not None:
            ownership.remove_published(self.out_dir, foreign)
        if not self.keeps_reports:
            clear_reports(self.out_dir)
        self._mark()

    def _mark(self) -> None:
        """Record in the folder which recipe runs there and what it published (with what the
        same recipe's earlier runs published and is still there)."""
        if not self.writes or self.identity is None:
            return
        earlier: list[str] = []
        if self.previous is not None and self.identity.same_as(self.previous):
            earlier = [
                n
                for n in self.previous.get("artifacts", [])
                if isinstance(n, str) and (self.out_dir / n).is_file()
            ]
        names = list(dict.fromkeys([*earlier, *self.published.values()]))
        doc = ownership.marker_doc(self.identity, self.recipe_hash, self.command, names)
        ownership.write_marker(self.out_dir, doc)

    def finish(self) -> None:
        """The run wrote its last file: the marker lists everything it published."""
        self._mark()

    def unique(self, name: str, index: int) -> str:
        """`name`, or `name` with the stage index in it when an earlier stage took it."""
        if name in self.published.values():
            name = name.replace(".onnx", f".{index}.onnx")
        return name

    def publish_onnx(self, role: str, source: Path, name: str) -> str:
        """Copy an ONNX model (and its external data) in under `name`; returns the name."""
        from modelquant.models import onnx_file

        if self.writes:
            onnx_file.copy(source, self.out_dir / name)
        self.published[role] = name
        return name

    def alias(self, role: str, existing_role: str) -> None:
        """Record `role` as the same file as an already published role."""
        self.published[role] = self.published[existing_role]

    def path(self, role: str) -> Path:
        return self.out_dir / self.published[role]

    def write_text(self, role: str, name: str, text: str) -> None:
        if self.writes:
            write_atomic(self.out_dir / name, text)
        self.published[role] = name
