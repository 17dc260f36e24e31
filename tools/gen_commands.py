"""Regenerate ``client/data/commands.json`` from a real Redis server's COMMAND / COMMAND DOCS.

Usage::

    python tools/gen_commands.py                 # start a private redis-server, write the file
    python tools/gen_commands.py --check         # exit 1 when the bundled file is out of date
    python tools/gen_commands.py -p 6379         # use a running server on 127.0.0.1:6379

Without ``-p``, a throwaway ``redis-server`` (from ``$PATH`` or ``--redis-server``) is started
on a Unix socket in a temp dir, with no persistence, and stopped by PID afterwards. The
replies are read in RESP2 with redis-py (a test-only dependency, fine for a dev tool), turned
into the table by :meth:`client.commands.CommandTable.from_replies` and written as compact JSON.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.commands import CommandTable  # noqa: E402

__all__ = ["fetch_table", "main"]

TARGET = ROOT / "client" / "data" / "commands.json"


def _raw(client: Any, *args: str) -> Any:
    """One command's reply as parsed RESP2 (bytes, int, list, None), without redis-py's
    response callbacks."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


def fetch_table(client: Any) -> CommandTable:
    """The command table of the server behind a redis-py client (protocol 2)."""
    version = _raw(client, "INFO", "server")
    text = version.decode() if isinstance(version, bytes) else str(version)
    redis_version = ""
    for line in text.splitlines():
        if line.startswith("redis_version:"):
            redis_version = line.partition(":")[2].strip()
    return CommandTable.from_replies(
        _raw(client, "COMMAND"), _raw(client, "COMMAND", "DOCS"), redis_version=redis_version
    )


@contextmanager
def _private_server(binary: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gen-commands-") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"error: {binary} did not start (exit {proc.poll()})")
                time.sleep(0.02)
            yield sock
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, help="use a running server (default: start one)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("-o", "--output", type=Path, default=TARGET)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on change")
    opts = parser.parse_args(argv)

    import redis

    if opts.port is not None:
        with redis.Redis(host=opts.host, port=opts.port, protocol=2) as client:
            table = fetch_table(client)
    else:
        with (
            _private_server(opts.redis_server) as sock,
            redis.Redis(unix_socket_path=str(sock), protocol=2) as client,
        ):
            table = fetch_table(client)

    text = table.to_json() + "\n"
    if opts.check:
        current = opts.output.read_text("utf-8") if opts.output.exists() else ""
        if current != text:
            print(f"{opts.output} is out of date for Redis {table.redis_version}", file=sys.stderr)
            return 1
        print(f"{opts.output} is up to date ({len(table)} commands, Redis {table.redis_version})")
        return 0
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(text, "utf-8")
    print(
        f"wrote {opts.output}: {len(table)} commands from Redis {table.redis_version}, "
        f"{len(text)} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
