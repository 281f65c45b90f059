"""The `Report` (report.json is the source of truth) and the registry of the file renderers that
read it. Adding a format (html, junit next) is one module with `@register_renderer(...)` on a
`render(report) -> str` function and one import line in `_load_renderers`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelquant.report.model import Report

Renderer = Callable[["Report"], str]
_RENDERERS: dict[str, tuple[str, Renderer]] = {}


def register_renderer(fmt: str, filename: str) -> Callable[[Renderer], Renderer]:
    """Function decorator: `output.formats: [fmt]` writes `filename` with this renderer."""

    def decorate(render: Renderer) -> Renderer:
        if fmt in _RENDERERS:
            raise ValueError(f"report format '{fmt}' is registered twice")
        _RENDERERS[fmt] = (filename, render)
        return render

    return decorate


def _load_renderers() -> None:
    from modelquant.report import (  # noqa: F401  (each registers its format)
        html,
        json_file,
        junit,
        markdown,
    )


def file_renderers() -> dict[str, tuple[str, Renderer]]:
    """Format -> (file name, renderer), in registration order."""
    _load_renderers()
    return dict(_RENDERERS)
