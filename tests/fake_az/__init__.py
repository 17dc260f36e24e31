"""A fake Azure CLI for tests: :func:`install` puts an ``az`` executable first on PATH."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FakeAz", "install"]

HERE = Path(__file__).resolve().parent


@dataclass
class FakeAz:
    """The installed fake: its bin directory, and the log of the calls it received."""

    bin_dir: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def env(self, scenario: str = "ok", path: str | None = None) -> dict[str, str]:
        """Environment variables that select ``scenario`` with this fake first on PATH."""
        rest = os.environ.get("PATH", "") if path is None else path
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{rest}",
            "FAKE_AZ_SCENARIO": scenario,
            "FAKE_AZ_LOG": str(self.log),
            "FAKE_AZ_HOME": str(HERE),
        }


def install(directory: Path) -> FakeAz:
    """Write an executable ``az`` (running this interpreter) into ``directory/bin``."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "az"
    source = (HERE / "fake_az.py").read_text(encoding="utf-8")
    script.write_text(f"#!{sys.executable} -S\n{source}", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return FakeAz(bin_dir=bin_dir, log=directory / "az-calls.jsonl")
