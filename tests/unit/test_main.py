"""The console entry point: mode dispatch, usage errors, and README/CI consistency."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from client.main import load_modes, main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from client.main import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_every_mode_is_installed() -> None:
    modes = load_modes()
    for name in ("tunn", "tunnel", "cli", "fill"):
        assert name in modes, name
    assert modes["tunnel"] is modes["tunn"]


def test_no_arguments_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: redis-client MODE" in err
    for name in ("tunn", "cli", "fill"):
        assert f"  {name}" in err


def test_unknown_mode_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "unknown mode 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["tunn", "tunnel", "cli", "fill"])
def test_help_on_every_mode(mode: str) -> None:
    proc = run(mode, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: redis-client {'tunn' if mode == 'tunnel' else mode}" in proc.stdout
    # -h is the host, as in redis-cli; --help is the only help flag.
    assert "-h HOST, --host HOST" in proc.stdout


@pytest.mark.parametrize("mode", ["tunn", "cli", "fill"])
def test_bad_flag_prints_usage_and_exits_2(mode: str) -> None:
    proc = run(mode, "--no-such-flag")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    quick = [b for b in blocks if "apt-get install" in b]
    assert len(quick) == 2, "the quick start is exactly two commands"
    demo, tests = quick
    assert "redis-client tunn --demo" in demo
    ci = (ROOT / ".ci" / "run").read_text()
    # Every step of the README's test command appears in .ci/run, in the same order.
    steps = [s.strip() for s in tests.split("&&")]
    assert steps[-1].endswith("python -m pytest")
    pos = 0
    for step in steps[1:]:
        found = ci.find(step, pos)
        assert found >= 0, f".ci/run lacks the README step {step!r}"
        pos = found
    for package in ("redis-server", "redis-tools", "stunnel4"):
        assert package in ci


def test_a_mode_starts_without_importing_the_others() -> None:
    code = (
        "import sys; from client.main import find_mode; "
        "assert find_mode('fill').name == 'fill'; assert find_mode('tunnel').name == 'tunn'; "
        "assert 'client.shell' not in sys.modules, 'cli imported'; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr
