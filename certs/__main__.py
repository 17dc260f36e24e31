"""``python -m certs DIR [--name NAME ...]``: write a local CA, server and client certificate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from certs import DEFAULT_NAMES, generate

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m certs",
        description=(
            "Write ca.crt/ca.key, server.crt/server.key and client.crt/client.key into DIR. "
            f"The server certificate covers {', '.join(DEFAULT_NAMES)} plus every --name and "
            "allows both serverAuth and clientAuth. Existing valid files are kept."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="output directory (created if missing)")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        paths = generate(args.directory, args.name)
    except OSError as exc:
        print(f"certs: cannot write to {args.directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in paths.all():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
