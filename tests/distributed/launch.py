"""Launch N ranks the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
each a plain subprocess, so that every rank's exit code and output can be read on its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rank:
    rank: int
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    args: list[str],
    world: int = 2,
    *,
    cwd: list[Path] | None = None,
    env: dict[str, str] | None = None,
    per_rank_env: list[dict[str, str]] | None = None,
    timeout: float = 300,
) -> list[Rank]:
    """Run `python <args>` as `world` ranks ("{rank}" in an argument becomes the rank); each
    rank's exit code, stdout and stderr."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        rank_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            **(env or {}),
            **((per_rank_env or [{}] * world)[rank]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, *(a.replace("{rank}", str(rank)) for a in args)],
                cwd=(cwd[rank] if cwd else ROOT),
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    ranks = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=timeout)
            ranks.append(Rank(rank, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ranks
