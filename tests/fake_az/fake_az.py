"""A fake ``az`` (Azure CLI) for tests: answers from recorded JSON, logs every call.

Installed by :func:`fake_az.install` as an executable named ``az`` first on PATH. Environment:

- ``FAKE_AZ_SCENARIO``: a scenario name from ``scenarios.json`` (default ``ok``);
- ``FAKE_AZ_LOG``: a file that gets one JSON line per call: the arguments.

A scenario is a list of rules, tried in order (then those of the scenario it ``extends``). A
rule matches on the command words (``redis list-keys``) and, optionally, option values
(``"when": {"--name": "contoso-std"}``). It answers with ``stdout`` (JSON, or text),
``file`` (a JSON file in ``data/``) or ``jwt`` (a fresh token with those claims), plus
``stderr`` and ``exit``. No rule: exit 2, like az for an unknown command.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(os.environ.get("FAKE_AZ_HOME", Path(__file__).resolve().parent))


def split(argv: list[str]) -> tuple[str, dict[str, str]]:
    words: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and not argv[i].startswith("-"):
        words.append(argv[i])
        i += 1
    if not words and argv:
        return argv[0], {}  # --version
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
        options[arg] = value
        i += 2 if value else 1
    return " ".join(words), options


def rules_of(name: str, scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    scenario = scenarios[name]
    rules = list(scenario["rules"])
    if "extends" in scenario:
        rules += rules_of(scenario["extends"], scenarios)
    return rules


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(spec: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    lifetime = int(spec.get("lifetime", 3600))
    claims = {"aud": "https://redis.azure.com", "iat": now, "nbf": now, "exp": now + lifetime}
    claims.update({k: v for k, v in spec.items() if k != "lifetime"})
    header = b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "fake"}).encode())
    token = f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(b'fake-signature' * 8)}"
    return {
        "accessToken": token,
        "expiresOn": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(now + lifetime)),
        "expires_on": now + lifetime,
        "subscription": "11111111-2222-3333-4444-555555555555",
        "tenant": "99999999-8888-7777-6666-555555555555",
        "tokenType": "Bearer",
    }


def main(argv: list[str]) -> int:
    log = os.environ.get("FAKE_AZ_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(argv) + "\n")
    scenarios = json.loads((HERE / "scenarios.json").read_text(encoding="utf-8"))
    command, options = split(argv)
    for rule in rules_of(os.environ.get("FAKE_AZ_SCENARIO", "ok"), scenarios):
        if rule["command"] != command:
            continue
        if any(options.get(k) != v for k, v in rule.get("when", {}).items()):
            continue
        if "file" in rule:
            out: Any = json.loads((HERE / "data" / rule["file"]).read_text(encoding="utf-8"))
        elif "jwt" in rule:
            out = make_token(rule["jwt"])
        else:
            out = rule.get("stdout", "")
        if isinstance(out, str):
            sys.stdout.write(out)
        else:
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
        sys.stderr.write(rule.get("stderr", ""))
        return int(rule.get("exit", 0))
    sys.stderr.write(f"ERROR: '{command}' is misspelled or not recognized by the system.\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
