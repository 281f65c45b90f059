"""The `Report` (report.json is the source of truth) and the renderers that read it."""

from __future__ import annotations
