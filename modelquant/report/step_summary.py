"""The GitHub Actions step summary: when `GITHUB_STEP_SUMMARY` names a file, `compress` appends
the Markdown report (the same text as report.md) to it, whatever `output.formats` says, so that a
workflow shows the result on its run page without a step of its own. Appended, never overwritten
(other steps write there too); a path that cannot be written is a warning line on stderr, not a
failure of the run. Unset the variable for a step to leave its summary alone."""

from __future__ import annotations

import os
import sys

from modelquant.report.model import Report

ENV_VAR = "GITHUB_STEP_SUMMARY"


def append_step_summary(report: Report) -> bool:
    """Append the Markdown report to $GITHUB_STEP_SUMMARY when set; True when written."""
    target = os.environ.get(ENV_VAR, "").strip()
    if not target:
        return False
    from modelquant.report import file_renderers

    _, render = file_renderers()["md"]
    try:
        with open(target, "a", encoding="utf-8") as summary:
            summary.write(render(report) + "\n")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(
            f"warning: could not append the report to {ENV_VAR} ({target}: {reason}); "
            "the run goes on",
            file=sys.stderr,
        )
        return False
    return True
