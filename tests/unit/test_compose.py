"""compose.yaml: the local TLS cluster and the smart tunnel, checked without a Docker engine.

The file is read with ``docker compose config`` when the compose plugin is installed, and
otherwise with the small YAML reader below (block mappings and sequences, flow sequences,
quoted scalars, literal blocks, anchors, aliases and ``<<`` merges: the subset compose.yaml
uses) plus compose's ``${VAR}`` interpolation. The node configuration embedded in compose.yaml
is also fed to a real redis-server, and every shell script is syntax-checked with ``sh -n``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from servers import skip_or_fail

from certs import CertPaths

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PASSWORD = "compose-test-password-42"
NODES = [f"redis-{n}" for n in range(1, 7)]
ENV = {"REDIS_PASSWORD": PASSWORD}

# ------------------------------------------------------------------ a minimal YAML reader


class YamlError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _split_flow(text: str) -> list[str]:
    items, current, quote = [], "", None
    for ch in text:
        if quote:
            current += ch
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch == ",":
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current.strip())
    return items


class MiniYaml:
    """Parses the YAML subset compose.yaml uses into dicts, lists and strings."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.pos = 0
        self.anchors: dict[str, Any] = {}

    def parse(self) -> Any:
        value = self._block(0)
        self._skip_blank()
        if self.pos < len(self.lines):
            raise YamlError(f"unexpected line {self.pos + 1}: {self.lines[self.pos]!r}")
        return value

    def _skip_blank(self) -> None:
        while self.pos < len(self.lines) and not _strip_comment(self.lines[self.pos]).strip():
            self.pos += 1

    def _indent(self) -> int:
        line = self.lines[self.pos]
        return len(line) - len(line.lstrip(" "))

    def _block(self, indent: int) -> Any:
        self._skip_blank()
        if self.pos >= len(self.lines) or self._indent() < indent:
            return None
        if self.lines[self.pos].strip().startswith("- "):
            return self._sequence(self._indent())
        return self._mapping(self._indent())

    def _sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while True:
            self._skip_blank()
            if self.pos >= len(self.lines) or self._indent() != indent:
                return items
            text = _strip_comment(self.lines[self.pos]).strip()
            if not text.startswith("- "):
                return items
            self.pos += 1
            items.append(self._value(text[2:].strip(), indent))

    def _mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        while True:
            self._skip_blank()
            if self.pos >= len(self.lines) or self._indent() < indent:
                break
            if self._indent() > indent:
                raise YamlError(f"bad indentation at line {self.pos + 1}")
            text = _strip_comment(self.lines[self.pos]).strip()
            match = re.match(r'^("[^"]*"|[^\s:][^:]*?):(?:\s+(.*))?$', text)
            if not match:
                raise YamlError(f"not a mapping entry at line {self.pos + 1}: {text!r}")
            key = match.group(1).strip('"')
            self.pos += 1
            value = self._value((match.group(2) or "").strip(), indent)
            if key == "<<":
                if not isinstance(value, dict):
                    raise YamlError("<< needs a mapping")
                merged.update(value)
            elif key in result:
                raise YamlError(f"duplicate key {key!r}")
            else:
                result[key] = value
        return {**merged, **result}

    def _value(self, text: str, indent: int) -> Any:
        anchor = None
        if text.startswith("&"):
            anchor, _, text = text.partition(" ")
            anchor = anchor[1:]
            text = text.strip()
        if text.startswith("*"):
            value = self.anchors[text[1:]]
        elif text == "|":
            value = self._literal(indent)
        elif text == "":
            value = self._block(indent + 1)
        elif text.startswith("["):
            if not text.endswith("]"):
                raise YamlError(f"multi-line flow sequence at line {self.pos}")
            value = [self._scalar(item) for item in _split_flow(text[1:-1])]
        else:
            value = self._scalar(text)
        if anchor:
            self.anchors[anchor] = value
        return value

    def _literal(self, indent: int) -> str:
        lines: list[str] = []
        block_indent = None
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.strip():
                current = len(line) - len(line.lstrip(" "))
                if block_indent is None:
                    block_indent = current
                if current < block_indent or current <= indent:
                    break
                lines.append(line[block_indent:])
            else:
                lines.append("")
            self.pos += 1
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + "\n"

    @staticmethod
    def _scalar(text: str) -> str:
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return str(json.loads(text))
        if len(text) >= 2 and text[0] == text[-1] == "'":
            return text[1:-1].replace("''", "'")
        if text.startswith(("{", "&", "*", "!", "|", ">", "%", "@", "`")):
            raise YamlError(f"unsupported YAML: {text!r}")
        return text


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise YamlError(f"required variable {name} is missing a value: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(replace, value)


def read_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """compose.yaml, interpolated: through ``docker compose config`` when it works."""
    if compose_plugin():
        done = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise YamlError(done.stderr.strip())
        # `config` may print `$` escaped as `$$` again, so that its output stays valid compose.
        data = _unescape(json.loads(done.stdout))
        assert isinstance(data, dict)
        return data
    parsed = MiniYaml(COMPOSE.read_text()).parse()
    assert isinstance(parsed, dict)
    result = interpolate(parsed, env)
    assert isinstance(result, dict)
    return result


def _unescape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value.replace("$$", "$") if isinstance(value, str) else value


_PLUGIN: list[bool] = []


def compose_plugin() -> bool:
    if not _PLUGIN:
        ok = False
        if shutil.which("docker"):
            done = subprocess.run(
                ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
            )
            ok = done.returncode == 0
        _PLUGIN.append(ok)
    return _PLUGIN[0]


# ------------------------------------------------------------- normalised service views


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def ports_of(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of each published port."""
    ports: list[tuple[str, str, str]] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append(
                (str(port.get("host_ip", "")), str(port.get("published")), str(port["target"]))
            )
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            ports.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            ports.append(("", parts[0], parts[1]))
        else:
            ports.append(("", "", parts[0]))
    return ports


def argv_of(service: Mapping[str, Any]) -> list[str]:
    """entrypoint + command, as the container runs them."""

    def words(value: Any) -> list[str]:
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else str(value).split()

    return words(service.get("entrypoint")) + words(service.get("command"))


def script_of(service: Mapping[str, Any]) -> str:
    argv = argv_of(service)
    assert argv[:2] == ["sh", "-ec"], argv
    return argv[2]


def depends_of(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose(ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


# ----------------------------------------------------------------------------- the checks


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"certs", *NODES, "cluster-init", "tunnel"}


def test_only_the_tunnel_is_published_and_only_on_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        if name != "tunnel":
            assert not ports_of(service), f"{name} must not publish ports"
    assert ports_of(services["tunnel"]) == [("127.0.0.1", "6379", "6379")]


def test_tunnel_port_can_move() -> None:
    services = read_compose({**ENV, "TUNNEL_PORT": "7000"})["services"]
    assert ports_of(services["tunnel"]) == [("127.0.0.1", "7000", "6379")]


def test_password_comes_from_the_environment(services: dict[str, Any]) -> None:
    raw = COMPOSE.read_text()
    assert PASSWORD not in raw
    assert "${REDIS_PASSWORD:?" in raw  # required, no default password
    for node in NODES:
        env = env_of(services[node])
        assert env["REDIS_PASSWORD"] == PASSWORD
        assert env["REDISCLI_AUTH"] == PASSWORD
    assert env_of(services["cluster-init"])["REDISCLI_AUTH"] == PASSWORD
    assert env_of(services["tunnel"])["REDIS_CLIENT_PASSWORD"] == PASSWORD
    # Never on a command line (ps), never in an image.
    for name, service in services.items():
        assert PASSWORD not in " ".join(argv_of(service)), name
    assert "-a" not in argv_of(services["tunnel"])


def test_missing_password_is_refused() -> None:
    with pytest.raises(YamlError, match="REDIS_PASSWORD"):
        read_compose({})


def test_nodes_speak_tls_only_with_a_password(services: dict[str, Any]) -> None:
    for node in NODES:
        service = services[node]
        assert str(service["image"]).startswith("redis:7")
        assert service["hostname"] == node
        config = node_config(service)
        for line in (
            "port 0",
            "tls-port 6379",
            "tls-cert-file /certs/server.crt",
            "tls-key-file /certs/server.key",
            "tls-ca-cert-file /certs/ca.crt",
            "tls-replication yes",
            "tls-cluster yes",
            "cluster-enabled yes",
            "cluster-announce-hostname ${HOSTNAME}",
            "cluster-preferred-endpoint-type hostname",
            'requirepass "$REDIS_PASSWORD"',
            'masterauth "$REDIS_PASSWORD"',
        ):
            assert line in config.splitlines(), (node, line)
        assert depends_of(service) == {"certs": "service_completed_successfully"}
        assert "/certs:ro" in " ".join(str(v) for v in service["volumes"]) or any(
            isinstance(v, dict) and v.get("target") == "/certs" and v.get("read_only")
            for v in service["volumes"]
        )
        assert "--tls" in " ".join(service["healthcheck"]["test"])


def test_certificates_cover_every_node(services: dict[str, Any]) -> None:
    script = script_of(services["certs"])
    assert "python -m certs /certs" in script
    for node in NODES:
        assert f"--name {node}" in script
    assert "chown 999:999 /certs/server.key" in script


def test_cluster_is_created_over_tls(services: dict[str, Any]) -> None:
    service = services["cluster-init"]
    script = script_of(service)
    assert 'cli="redis-cli --tls --cacert /certs/ca.crt"' in script
    assert "--cluster create $nodes --cluster-replicas 1 --cluster-yes" in script
    assert "for n in 1 2 3 4 5 6" in script
    assert depends_of(service) == dict.fromkeys(NODES, "service_healthy")
    assert service.get("restart") in (None, "no")


def test_tunnel_is_smart_tls_and_verified(services: dict[str, Any]) -> None:
    service = services["tunnel"]
    argv = argv_of(service)
    assert argv[:2] == ["redis-client", "tunn"]
    pairs = dict(itertools.pairwise(argv))
    assert {"-c", "-t"} <= set(argv)
    assert pairs["-h"] == "redis-1"
    assert pairs["-p"] == "6379"
    assert pairs["--cacert"] == "/certs/ca.crt"
    assert pairs["--tunnel-mode"] == "smart"
    assert pairs["--listen"] == "0.0.0.0"  # inside the container; published on 127.0.0.1
    assert "--insecure" not in argv
    assert depends_of(service) == {"cluster-init": "service_completed_successfully"}
    build = service["build"]
    assert Path(ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerfile_installs_the_package() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install ." in text
    assert re.search(r"^USER (?!root)\S+$", text, re.M)  # the tunnel does not run as root
    for package in ("client", "tunnel", "fill", "certs"):
        assert f"COPY {package} ./{package}" in text


def test_shell_scripts_parse(services: dict[str, Any]) -> None:
    for name in ("certs", "redis-1", "cluster-init"):
        done = subprocess.run(
            ["sh", "-n", "-c", script_of(services[name])],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"


# ------------------------------------------------------------------ the reader itself


def test_mini_yaml_reader() -> None:
    text = """
# comment
x-base: &base
  image: "a:1"   # trailing comment
  list: ["sh", "-c", 'it''s']
top:
  <<: *base
  list:
    - |
      line 1
        indented
      last
    - plain # c
  value: ${A:-fallback} $$HOME ${B}
"""
    data = interpolate(MiniYaml(text).parse(), {"B": "bee"})
    assert data["top"] == {
        "image": "a:1",
        "list": ["line 1\n  indented\nlast\n", "plain"],
        "value": "fallback $HOME bee",
    }
    assert data["x-base"]["list"] == ["sh", "-c", "it's"]
    with pytest.raises(YamlError, match="required variable C"):
        interpolate("${C:?say C}", {})


# ------------------------------------------------ the node configuration, on a real server


def node_config(service: Mapping[str, Any]) -> str:
    match = re.search(r"<<EOF\n(.*?)\nEOF\n", script_of(service), re.S)
    assert match, "the node script writes its configuration with a heredoc"
    return match.group(1)


def _free_port_with_bus() -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair")


@pytest.fixture
def node_server(
    services: dict[str, Any], certs_dir: CertPaths, tmp_path: Path
) -> Iterator[tuple[int, CertPaths, subprocess.Popen[bytes]]]:
    """redis-server running the compose node configuration (paths and port adapted)."""
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("redis-server is not installed")
    port = _free_port_with_bus()
    config = node_config(services["redis-1"])
    config = (
        config.replace("${HOSTNAME}", "localhost")
        .replace("$REDIS_PASSWORD", PASSWORD)
        .replace("/certs/ca.crt", str(certs_dir.ca))
        .replace("/certs/server.crt", str(certs_dir.server_cert))
        .replace("/certs/server.key", str(certs_dir.server_key))
        .replace("/data", str(tmp_path))
        .replace("tls-port 6379", f"tls-port {port}")
    )
    config += f"\nbind 127.0.0.1\nlogfile {tmp_path / 'redis.log'}\n"
    (tmp_path / "redis.conf").write_text(config)
    process = subprocess.Popen([server, str(tmp_path / "redis.conf")])
    try:
        yield port, certs_dir, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.e2e
def test_node_configuration_runs(
    node_server: tuple[int, CertPaths, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, certs, process = node_server
    cli = shutil.which("redis-cli")
    if cli is None:
        skip_or_fail("redis-cli is not installed")
    base = [cli, "--tls", "--cacert", str(certs.ca), "-h", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "REDISCLI_AUTH": PASSWORD}
    reply = ""
    for _ in range(100):
        done = subprocess.run(
            [*base, "PING"], capture_output=True, text=True, env=env, timeout=10, check=False
        )
        reply = done.stdout.strip()
        if reply == "PONG" or process.poll() is not None:
            break
        time.sleep(0.1)
    log = tmp_path / "redis.log"
    assert reply == "PONG", log.read_text() if log.exists() else "no log"

    def call(*args: str, password: str | None = PASSWORD) -> str:
        run_env = dict(env)
        run_env.pop("REDISCLI_AUTH")
        if password:
            run_env["REDISCLI_AUTH"] = password
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, env=run_env, timeout=10, check=False
        )
        return done.stdout.strip()

    assert call("CONFIG", "GET", "cluster-enabled").split() == ["cluster-enabled", "yes"]
    assert call("CONFIG", "GET", "tls-cluster").split() == ["tls-cluster", "yes"]
    assert "NOAUTH" in call("GET", "x", password=None)
