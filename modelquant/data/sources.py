"""The data source registry: each source is one module with `@register_data_source(name)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelquant.data import Dataset
    from modelquant.recipe import DataSpec

Loader = Callable[["DataSpec", Path], "Dataset"]

COMMON_FIELDS = frozenset({"source", "split", "samples", "batch_size", "allow_overlap"})
"""DataSpec fields every source honours (the loader or the pipeline reads them)."""


@dataclass(frozen=True)
class DataSource:
    """A registered source: how to load it, its splits (None: it has none), what it reads."""

    name: str
    load: Loader
    splits: tuple[str, ...] | None
    fields: frozenset[str]
    """DataSpec fields besides the common ones that this source reads (`path`, `labels`, ...)."""
    description: str


_REGISTRY: dict[str, DataSource] = {}


def register_data_source(
    name: str, *, splits: tuple[str, ...] | None = None, fields: tuple[str, ...] = ()
) -> Callable[[Loader], Loader]:
    """Decorator on `load(spec, base_dir) -> Dataset`: make it a recipe `source:` (once).

    `splits`: the names `split:` may take (a split is then required); None when the source has
    no splits. `fields`: the DataSpec fields it reads besides the common ones, so that a recipe
    setting one the source ignores is told so. The docstring's first line describes the source.
    """

    def decorate(load: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"data source '{name}' is registered twice")
        doc = (load.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = DataSource(name, load, splits, frozenset(fields), doc)
        return load

    return decorate


def data_file(spec: DataSpec, base_dir: Path, kind: str) -> Path:
    """The existing file a file source's `path:` names, looked up as every recipe path is
    (`models.resolve_path`: the working directory, beside the recipe, the package)."""
    from modelquant.errors import UserError
    from modelquant.models import resolve_path

    if spec.path is None:
        raise UserError(f"the {spec.source} source needs path: <file.{kind}>")
    path = resolve_path(spec.path, [base_dir], "data file")
    if path.is_dir():
        raise UserError(f"data file {path} is a folder; give path: the .{kind} file itself")
    return path


def registered_data_sources() -> dict[str, DataSource]:
    """Source name -> source, in registration order (the built-ins register on import)."""
    import modelquant.data  # noqa: F401  (importing the package registers the built-ins)

    return dict(_REGISTRY)
