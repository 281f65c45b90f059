"""examples/ci: the GitHub Actions workflow parses, has its steps, runs only real modelquant verbs
with real options on a recipe that validates, and its baseline report is a Report of that recipe."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.recipe import load_recipe
from modelquant.report import file_renderers
from modelquant.report.model import Report

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "examples" / "ci"
WORKFLOW = CI / "modelquant.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def _step(workflow: dict[str, Any], uses: str) -> dict[str, Any]:
    found = [s for s in _steps(workflow) if s.get("uses", "").startswith(uses + "@")]
    assert len(found) == 1, f"one step uses {uses}"
    return found[0]


def _commands(workflow: dict[str, Any]) -> list[list[str]]:
    """Every `modelquant ...` command in a run: step, as argument lists (shell words)."""
    commands = []
    for step in _steps(workflow):
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "modelquant":
                commands.append(words[1:])
    return commands


def _command(workflow: dict[str, Any], *verbs: str) -> list[str]:
    found = [c for c in _commands(workflow) if c[: len(verbs)] == list(verbs)]
    assert len(found) == 1, f"one `modelquant {' '.join(verbs)}` step"
    return found[0][len(verbs) :]


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_workflow_triggers_and_its_steps(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and "push" in triggers
    assert workflow["permissions"]["checks"] == "write"  # the JUnit check run
    _step(workflow, "actions/checkout")
    assert str(_step(workflow, "actions/setup-python")["with"]["python-version"]) == "3.11"
    installs = " ".join(s.get("run", "") for s in _steps(workflow))
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in installs
    assert "pip install ." in installs
    upload = _step(workflow, "actions/upload-artifact")
    junit = _step(workflow, "mikepenz/action-junit-report")
    assert upload["if"] == "always()" and junit["if"] == "always()"

    compress = _command(workflow, "compress")
    out = _option(compress, "--out")
    formats = _option(compress, "--set")
    assert formats.startswith("output.formats=")
    for fmt in ("html", "junit"):
        assert fmt in yaml.safe_load(formats.partition("=")[2])
    assert f"{out}/report.html" in upload["with"]["path"].split()
    assert junit["with"]["report_paths"] == f"{out}/junit.xml"
    diff = _command(workflow, "report", "diff")
    assert diff[:2] == ["examples/ci/baseline-report.json", f"{out}/report.json"]
    assert _option(diff, "--max-accuracy-drop") == "0.01"
    assert _option(diff, "--max-latency-regression") == "0.25"
    assert _option(diff, "--max-speedup-loss") == "0.25"  # the check across machines


def _resolve(words: list[str]) -> tuple[list[str], Any, list[str]]:
    """(verb path, its click command, the rest) of a command line; fails on an unknown verb.
    A group is a command with `commands` (typer carries its own copy of click)."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(words)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, (
            f"`modelquant {' '.join([*path, rest[0]])}` is not a CLI verb "
            f"(known: {', '.join(sorted(command.commands))})"
        )
        path.append(rest.pop(0))
        command = sub
    assert not hasattr(command, "commands"), f"`modelquant {' '.join(path)}` needs a verb"
    return path, command, rest


def test_every_modelquant_command_is_a_real_verb_with_real_options(
    workflow: dict[str, Any],
) -> None:
    commands = _commands(workflow)
    assert len(commands) >= 2
    for words in commands:
        path, command, rest = _resolve(words)
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.partition("=")[0] in known, f"modelquant {' '.join(path)}: {word}"
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output


def test_the_recipe_and_overrides_it_runs_validate(workflow: dict[str, Any]) -> None:
    compress = _command(workflow, "compress")
    recipe = load_recipe(ROOT / compress[0], [_option(compress, "--set")])
    renderers = file_renderers()
    assert renderers["html"][0] == "report.html"
    assert renderers["junit"][0] == "junit.xml"
    assert {"html", "junit"} <= set(recipe.output.formats)


def test_the_baseline_is_a_report_of_that_recipe(workflow: dict[str, Any]) -> None:
    diff = _command(workflow, "report", "diff")
    baseline_path = ROOT / diff[0]
    baseline = Report.model_validate_json(baseline_path.read_text())
    compress = _command(workflow, "compress")
    recipe = load_recipe(ROOT / compress[0])
    assert baseline.recipe["name"] == recipe.name
    assert baseline.recipe["stages"] == recipe.model_dump(mode="json")["stages"]
    assert baseline.status == "passed" and all(g.passed for g in baseline.gates)
    assert (CI / "README.md").is_file()
