"""The ``redis-client`` console entry point: pick the mode, parse its flags, run it.

client/ is the base and must not import tunnel/ or fill/. The modes are therefore found by name
through the ``redis_client.modes`` entry points declared in pyproject.toml (with the same
module paths as a fallback when running from a source tree that was never installed).

Exit status: 0 on success, 1 when the work failed (unreachable server, error replies), 2 for
bad usage (unknown mode or flag, invalid value), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from client.errors import ConfigError, RedisToolkitError

__all__ = ["Mode", "find_mode", "load_modes", "main"]

ENTRY_POINT_GROUP = "redis_client.modes"
_FALLBACK = {
    "tunn": "tunnel.main:MODE",
    "tunnel": "tunnel.main:MODE",
    "cli": "client.shell:MODE",
    "fill": "fill.main:MODE",
    "azure": "client.azure:MODE",
}


@dataclass(frozen=True)
class Mode:
    """One mode of the executable.

    Attributes:
        name: what the user types (``tunn``).
        summary: one line for the mode list.
        configure: adds the mode's flags (shared ones included) to an ``add_help=False`` parser.
        run: does the work and returns the exit status.
        aliases: other accepted names (``tunnel``).
    """

    name: str
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    aliases: tuple[str, ...] = ()


def _load(spec: str) -> Mode | None:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    mode = getattr(module, attr, None)
    return mode if isinstance(mode, Mode) else None


def load_modes() -> dict[str, Mode]:
    """Every installed mode, by name and alias."""
    specs = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name, spec in _FALLBACK.items():
        specs.setdefault(name, spec)
    modes: dict[str, Mode] = {}
    for spec in specs.values():
        mode = _load(spec)
        if mode is None:
            continue
        for name in (mode.name, *mode.aliases):
            modes[name] = mode
    return modes


def find_mode(name: str) -> Mode | None:
    """The mode called ``name`` (or an alias), importing only that mode's module.

    Start-up time matters (fill and the CLI are often run in loops), so the built-in modes are
    looked up by name without scanning entry points or importing the other modes.
    """
    spec = _FALLBACK.get(name)
    if spec is None:
        spec = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}.get(name)
    mode = _load(spec) if spec is not None else None
    if mode is not None and name in (mode.name, *mode.aliases):
        return mode
    return load_modes().get(name)


def _usage(modes: dict[str, Mode]) -> str:
    lines = ["usage: redis-client MODE [options]   (redis-client MODE --help for its options)", ""]
    lines.append("modes:")
    seen: set[str] = set()
    for mode in modes.values():
        if mode.name in seen:
            continue
        seen.add(mode.name)
        alias = f" (alias: {', '.join(mode.aliases)})" if mode.aliases else ""
        lines.append(f"  {mode.name:<6} {mode.summary}{alias}")
    return "\n".join(lines)


def build_parser(mode: Mode) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"redis-client {mode.name}", description=mode.summary, add_help=False
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    mode.configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``redis-client`` and return its exit status (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("--help", "help"):
        print(_usage(load_modes()), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    mode = find_mode(args[0])
    if mode is None:
        print(f"redis-client: unknown mode {args[0]!r}\n{_usage(load_modes())}", file=sys.stderr)
        return 2
    parser = build_parser(mode)
    try:
        ns = parser.parse_args(args[1:])
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, usage already printed)
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if ns.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return mode.run(ns)
    except ConfigError as exc:
        if ns.debug:
            raise
        print(f"redis-client {mode.name}: {exc}", file=sys.stderr)
        return 2
    except RedisToolkitError as exc:
        if ns.debug:
            raise
        print(f"redis-client {mode.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())
