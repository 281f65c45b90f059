"""A built wheel, installed away from the checkout, lists, shows and validates bundled recipes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelquant

SOURCE = Path(modelquant.__file__).resolve().parent.parent
BUNDLED = sorted(p.stem for p in (SOURCE / "modelquant" / "recipes").glob("*.yaml"))
assert BUNDLED, "modelquant/recipes holds the bundled recipes"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_installed_wheel_ships_the_recipes_and_the_example(tmp_path: Path) -> None:
    # Build from a copy, so setuptools' build/ and egg-info land in tmp_path, not the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SOURCE / "modelquant", src / "modelquant", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI")}
    env.update(
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TMPDIR=str(tmp_path),
        PYTHONDONTWRITEBYTECODE="1",
    )
    pip = [sys.executable, "-m", "pip", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", "whl", str(src)], tmp_path, env)
    (wheel,) = (tmp_path / "whl").glob("modelquant-*.whl")
    _run([*pip, "install", "--no-deps", "--target", "site", str(wheel)], tmp_path, env)

    empty = tmp_path / "empty"
    empty.mkdir()
    env["PYTHONPATH"] = str(tmp_path / "site")
    mq = [sys.executable, "-m", "modelquant"]
    probe = [sys.executable, "-c", "import modelquant; print(modelquant.__file__)"]
    where = _run(probe, empty, env)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "site")
    assert (tmp_path / "site/modelquant/examples/digits/cnn.safetensors").is_file()

    listed = _run([*mq, "recipes", "list"], empty, env).stdout.splitlines()
    assert sorted(line.split()[0] for line in listed) == BUNDLED

    shown = _run([*mq, "recipes", "show", "digits-eighth"], empty, env).stdout
    (empty / "x.yaml").write_text(shown)
    _run([*mq, "recipes", "validate", "x.yaml"], empty, env)
    # The copy names examples/digits/cnn.safetensors: found in the installed package.
    plan = _run([*mq, "compress", "x.yaml", "--dry-run", "--out", str(tmp_path / "o")], empty, env)
    assert "data.train: digits:train, 1077 samples" in plan.stdout
