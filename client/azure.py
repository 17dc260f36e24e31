"""``redis-client azure``: find an Azure cache with the Azure CLI and open it in a mode.

    redis-client azure [-s SUBSCRIPTION] [-g RESOURCE_GROUP] [--cache NAME] [--mode MODE]
                       [--auth auto|entra|keys] [--print-only]

The flow (the earlier ``azure-redis-connect`` script, done better):

1. Check that ``az`` is installed and logged in (one clear line each when not). ``-s`` is
   passed to every ``az`` call as ``--subscription``; the global default is never changed.
2. List Azure Cache for Redis (``az redis list``) and Azure Managed Redis / Enterprise caches
   (``az redisenterprise list``, plus ``az redisenterprise database list`` for the port, the
   protocol and the clustering policy), and print a table on stderr.
3. Ask for a cache and a mode (tunnel smart or pinned for clustered caches, tunnel, cli, fill)
   on stdin, unless ``--cache`` / ``--mode`` answer.
4. Pick the authentication: Microsoft Entra ID when access keys are disabled or Entra is set up
   for the cache (Basic/Standard/Premium: ``aad-enabled`` and an access policy assignment),
   access keys otherwise (``--auth`` overrides).
5. Build the ``redis-client`` command: ``-t`` and the TLS port (6380, 10000, ...), ``-c`` when the
   cache is a cluster to the client (shards > 0, or the OSS clustering policy; the Enterprise
   policy is a proxy and needs no ``-c``), ``--entra`` so long tunnels refresh their token, or
   the access key in ``REDIS_CLIENT_PASSWORD`` (never on the command line).
6. ``--print-only`` prints the command on stdout, the key shown as ``***``; otherwise the
   command replaces this process.

Everything that talks to people goes to stderr, so stdout carries only the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeVar

from client.credentials import redact
from client.errors import ConfigError, RedisToolkitError
from client.main import Mode
from client.options import PASSWORD_ENV

__all__ = [
    "MODE",
    "AzCli",
    "Cache",
    "Launch",
    "build_launch",
    "cache_from_enterprise",
    "caches_from_redis_list",
    "configure",
    "format_table",
    "run",
]

AZ_TIMEOUT = 120.0
ENTERPRISE_DEFAULT_PORT = 10000
STANDARD_TLS_PORT = 6380
#: Fill flags for a cache: the earlier tool's tuned values (512 B keys, 256 KiB values).
FILL_FLAGS = ("--key-size", "512", "--value-size", "262144")
FILL_CLUSTER_PROCESSES = "8"
_MAX_TRIES = 3
_MANAGED_PREFIXES = ("Balanced_", "MemoryOptimized_", "ComputeOptimized_", "FlashOptimized_")
_PERMISSION_HINT = (
    "ask for the Reader role on the subscription or resource group "
    "(and Redis Cache Contributor to read access keys)"
)

T = TypeVar("T")

# ------------------------------------------------------------------------ the cache model


@dataclass(frozen=True, slots=True)
class Cache:
    """One cache as the table shows it and the command needs it.

    Attributes:
        family: ``redis`` (Basic/Standard/Premium, ``az redis``) or ``enterprise``
            (Azure Managed Redis and Enterprise, ``az redisenterprise``).
        shard_count: Premium clustering (0 = not clustered).
        clustering_policy: Enterprise/Managed database policy (``OSSCluster``,
            ``EnterpriseCluster``, ``NoCluster``), None when unknown.
        entra_enabled: Basic/Standard/Premium ``aad-enabled``; None when the API does not say.
        access_keys: False when access-key authentication is disabled.
    """

    name: str
    family: str
    kind: str
    resource_group: str
    region: str
    sku: str
    host: str
    port: int
    tls: bool = True
    shard_count: int = 0
    clustering_policy: str | None = None
    entra_enabled: bool | None = None
    access_keys: bool = True

    @property
    def clustered(self) -> bool:
        """True when clients must speak the cluster protocol (``-c``)."""
        if self.family == "redis":
            return self.shard_count > 0
        return self.clustering_policy == "OSSCluster"

    @property
    def clustering(self) -> str:
        """The CLUSTERED column."""
        if self.family == "redis":
            return f"yes: {self.shard_count} shards" if self.shard_count > 0 else "no"
        return {
            "OSSCluster": "yes: OSS policy",
            "EnterpriseCluster": "no: Enterprise policy (proxy)",
            "NoCluster": "no",
        }.get(self.clustering_policy or "", "unknown")


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default


def _resource_group(item: Mapping[str, object]) -> str:
    group = _text(item.get("resourceGroup"))
    if group:
        return group
    parts = _text(item.get("id")).split("/")
    lowered = [p.lower() for p in parts]
    if "resourcegroups" in lowered:
        index = lowered.index("resourcegroups") + 1
        if index < len(parts):
            return parts[index]
    return "?"


def _true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def caches_from_redis_list(data: object) -> list[Cache]:
    """Parse ``az redis list -o json`` (Basic, Standard and Premium caches)."""
    caches: list[Cache] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        sku = item.get("sku") if isinstance(item.get("sku"), dict) else {}
        assert isinstance(sku, dict)
        sku_text = " ".join(
            p
            for p in (
                _text(sku.get("name")),
                f"{_text(sku.get('family'))}{sku.get('capacity', '')}",
            )
            if p
        )
        config = item.get("redisConfiguration")
        entra = None
        if isinstance(config, dict):
            entra = _true(config.get("aad-enabled") or config.get("aadEnabled"))
        caches.append(
            Cache(
                name=_text(item.get("name"), "?"),
                family="redis",
                kind="Cache for Redis",
                resource_group=_resource_group(item),
                region=_text(item.get("location")),
                sku=sku_text,
                host=_text(item.get("hostName")),
                port=_int(item.get("sslPort"), STANDARD_TLS_PORT),
                shard_count=_int(item.get("shardCount"), 0),
                entra_enabled=entra,
                access_keys=not _true(item.get("disableAccessKeyAuthentication")),
            )
        )
    return caches


def cache_from_enterprise(cluster: Mapping[str, object], databases: object) -> Cache:
    """Parse one ``az redisenterprise list`` item and its ``database list``."""
    sku = cluster.get("sku") if isinstance(cluster.get("sku"), dict) else {}
    assert isinstance(sku, dict)
    sku_name = _text(sku.get("name"))
    kind = "Managed Redis" if sku_name.startswith(_MANAGED_PREFIXES) else "Redis Enterprise"
    database: Mapping[str, object] = {}
    if isinstance(databases, list):
        found = [d for d in databases if isinstance(d, dict)]
        named = [d for d in found if d.get("name") == "default"]
        database = (named or found or [{}])[0]
    return Cache(
        name=_text(cluster.get("name"), "?"),
        family="enterprise",
        kind=kind,
        resource_group=_resource_group(cluster),
        region=_text(cluster.get("location")),
        sku=sku_name,
        host=_text(cluster.get("hostName")),
        port=_int(database.get("port"), ENTERPRISE_DEFAULT_PORT),
        tls=_text(database.get("clientProtocol"), "Encrypted") != "Plaintext",
        clustering_policy=_text(database.get("clusteringPolicy")) or None,
        access_keys=_text(database.get("accessKeysAuthentication")) != "Disabled",
    )


def format_table(caches: Sequence[Cache]) -> str:
    """The numbered cache table (columns sized to their content)."""
    header = ("#", "NAME", "KIND", "RESOURCE GROUP", "REGION", "SKU", "TLS PORT", "CLUSTERED")
    rows = [header]
    for number, cache in enumerate(caches, 1):
        port = str(cache.port) if cache.tls else f"{cache.port} (no TLS)"
        rows.append(
            (
                str(number),
                cache.name,
                cache.kind,
                cache.resource_group,
                cache.region,
                cache.sku,
                port,
                cache.clustering,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class Launch:
    """The command to run; the access key (if any) travels in the environment."""

    argv: tuple[str, ...]
    password: str | None = None

    def display(self) -> str:
        """The command as a shell line, the secret shown as ``***``."""
        line = shlex.join(self.argv)
        return f"{PASSWORD_ENV}=*** {line}" if self.password is not None else line


def build_launch(
    cache: Cache,
    mode: str,
    *,
    entra: bool,
    password: str | None = None,
    tenant: str | None = None,
    fill_gb: str | None = None,
    flush: bool = False,
) -> Launch:
    """The ``redis-client`` command for ``cache`` in ``mode`` (pure).

    ``mode`` is ``smart`` or ``pinned`` (tunnel to a clustered cache), ``tunnel``, ``cli`` or
    ``fill``.
    """
    tool = {"smart": "tunn", "pinned": "tunn", "tunnel": "tunn", "cli": "cli", "fill": "fill"}
    argv = ["redis-client", tool[mode], "-h", cache.host, "-p", str(cache.port)]
    if cache.tls:
        argv.append("-t")
    if cache.clustered:
        argv.append("-c")
        if tool[mode] == "tunn":
            argv += ["--tunnel-mode", "pinned" if mode == "pinned" else "smart"]
    if mode == "fill":
        if fill_gb is not None:
            argv += ["-d", fill_gb]
        if flush:
            argv.append("-f")
        argv += FILL_FLAGS
        if cache.clustered:
            argv += ["-P", FILL_CLUSTER_PROCESSES]
    if entra:
        argv.append("--entra")
        if tenant:
            argv += ["--entra-tenant", tenant]
        password = None
    return Launch(argv=tuple(argv), password=password)


def modes_for(cache: Cache) -> list[tuple[str, str]]:
    """The mode menu for a cache: (mode, description)."""
    if cache.clustered:
        tunnels = [
            ("smart", "tunnel, smart: the whole cluster as one Redis on 127.0.0.1:6379"),
            ("pinned", "tunnel, pinned: one local port per node, for cluster-aware clients"),
        ]
    else:
        tunnels = [("tunnel", "tunnel: the cache as a plain Redis on 127.0.0.1:6379")]
    return [
        *tunnels,
        ("cli", "cli: an interactive shell"),
        ("fill", "fill: load N GB of test data"),
    ]


# ----------------------------------------------------------------------------------- az


class AzCli:
    """Runs ``az ... -o json`` and turns its failures into one-line errors."""

    def __init__(self, executable: str, subscription: str | None = None) -> None:
        self.executable = executable
        self.subscription = subscription
        self.secrets: list[str] = []

    def json(self, *args: str, what: str) -> object:
        """Run ``az ARGS -o json`` and return the parsed output (None when empty).

        Raises:
            RedisToolkitError: one line saying what failed and why (not logged in,
                permission denied, not found, ...), secrets redacted.
        """
        argv = [self.executable, *args, "-o", "json"]
        if self.subscription:
            argv += ["--subscription", self.subscription]
        env = dict(os.environ)
        env.update(
            AZURE_CORE_NO_COLOR="1",
            AZURE_CORE_ONLY_SHOW_ERRORS="1",
            AZURE_EXTENSION_USE_DYNAMIC_INSTALL="no",
        )
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=AZ_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            msg = f"{what} timed out after {AZ_TIMEOUT:g} s"
            raise RedisToolkitError(msg, hint="check your network, or retry") from None
        except OSError as exc:
            raise RedisToolkitError(f"cannot run az: {exc.strerror or exc}") from None
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode != 0:
            raise self.failure(what, done.returncode, stderr)
        text = done.stdout.decode("utf-8", "replace").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise RedisToolkitError(f"{what}: az printed something that is not JSON") from None

    def failure(self, what: str, code: int, stderr: str) -> RedisToolkitError:
        """Classify an ``az`` failure from its stderr (pure)."""
        lowered = stderr.lower()
        if "az login" in lowered or "aadsts" in lowered or "no subscription found" in lowered:
            return RedisToolkitError(f"not logged in to Azure ({what} failed)", hint="run az login")
        if (
            "authorizationfailed" in lowered
            or "does not have authorization" in lowered
            or "forbidden" in lowered
        ):
            return RedisToolkitError(f"permission denied: {what}", hint=_PERMISSION_HINT)
        if "subscription" in lowered and ("not found" in lowered or "doesn't exist" in lowered):
            return RedisToolkitError(
                f"subscription {self.subscription!r} not found ({what} failed)",
                hint="list yours with: az account list -o table",
            )
        if "resourcegroupnotfound" in lowered or (
            "resource group" in lowered
            and ("could not be found" in lowered or "not found" in lowered)
        ):
            return RedisToolkitError(
                f"resource group not found ({what} failed)",
                hint="list them with: az group list -o table",
            )
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        tail = redact(" / ".join(lines[-2:])[-300:], self.secrets)
        return RedisToolkitError(f"{what} failed (exit {code})" + (f": {tail}" if tail else ""))


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    tenant: str | None


def _account(az: AzCli) -> _Account:
    data = az.json("account", "show", what="az account show")
    if not isinstance(data, dict):
        raise RedisToolkitError("az account show printed no account", hint="run az login")
    return _Account(
        name=_text(data.get("name")) or _text(data.get("id"), "?"),
        tenant=_text(data.get("tenantId")) or None,
    )


def _group_args(group: str | None) -> list[str]:
    return ["--resource-group", group] if group else []


def discover(az: AzCli, group: str | None, err: TextIO) -> list[Cache]:
    """Every cache in the subscription (and group): both families.

    A failure of one family is a warning when the other one listed something; when both fail
    the first error is raised.
    """
    errors: list[RedisToolkitError] = []
    caches: list[Cache] = []
    try:
        listed = az.json(
            "redis", "list", *_group_args(group), what="listing caches (az redis list)"
        )
        caches += caches_from_redis_list(listed)
    except RedisToolkitError as exc:
        errors.append(exc)
    try:
        clusters = az.json(
            "redisenterprise",
            "list",
            *_group_args(group),
            what="listing Azure Managed Redis caches (az redisenterprise list)",
        )
        for item in clusters if isinstance(clusters, list) else []:
            if not isinstance(item, dict):
                continue
            name = _text(item.get("name"))
            databases = az.json(
                "redisenterprise",
                "database",
                "list",
                "--cluster-name",
                name,
                "--resource-group",
                _resource_group(item),
                what=f"reading the database of {name} (az redisenterprise database list)",
            )
            caches.append(cache_from_enterprise(item, databases))
    except RedisToolkitError as exc:
        errors.append(exc)
    if errors and not caches:
        raise errors[0]
    for error in errors:
        print(f"warning: {error}", file=err)
    return caches


def _keys_of(az: AzCli, cache: Cache) -> str | None:
    """The primary access key, or None when the cache hands out none."""
    if cache.family == "redis":
        data = az.json(
            "redis",
            "list-keys",
            "--name",
            cache.name,
            "--resource-group",
            cache.resource_group,
            what=f"reading the access keys of {cache.name} (az redis list-keys)",
        )
    else:
        data = az.json(
            "redisenterprise",
            "database",
            "list-keys",
            "--cluster-name",
            cache.name,
            "--resource-group",
            cache.resource_group,
            what=f"reading the access keys of {cache.name} (az redisenterprise database list-keys)",
        )
    key = data.get("primaryKey") if isinstance(data, dict) else None
    if isinstance(key, str) and key:
        az.secrets.append(key)
        return key
    return None


def _has_access_policy(az: AzCli, cache: Cache) -> bool:
    try:
        data = az.json(
            "redis",
            "access-policy-assignment",
            "list",
            "--name",
            cache.name,
            "--resource-group",
            cache.resource_group,
            what=f"reading the Entra access policies of {cache.name}",
        )
    except RedisToolkitError:
        return False
    return isinstance(data, list) and len(data) > 0


def choose_auth(az: AzCli, cache: Cache, wanted: str, err: TextIO) -> tuple[bool, str | None]:
    """(use Entra, access key) for ``cache``; ``wanted`` is ``auto``, ``entra`` or ``keys``."""
    if wanted == "entra":
        return True, None
    if wanted == "keys":
        if not cache.access_keys:
            msg = f"{cache.name} has access-key authentication disabled"
            raise ConfigError(msg, hint="use --auth entra")
        key = _keys_of(az, cache)
        if key is None:
            raise RedisToolkitError(f"{cache.name} has no access key", hint="use --auth entra")
        return False, key
    if not cache.access_keys:
        if cache.entra_enabled is False:
            msg = f"{cache.name} has both access keys and Microsoft Entra authentication disabled"
            raise RedisToolkitError(msg, hint="enable one of them in the Azure portal")
        return True, None
    if cache.family == "redis" and cache.entra_enabled and _has_access_policy(az, cache):
        return True, None
    try:
        key = _keys_of(az, cache)
    except RedisToolkitError as exc:
        if cache.entra_enabled is False:
            raise
        print(f"warning: {exc}; using Microsoft Entra ID instead", file=err)
        return True, None
    if key is None:
        return True, None
    return False, key


# -------------------------------------------------------------------------------- prompts


def _ask(
    prompt: str,
    parse: Callable[[str], T | None],
    *,
    what: str,
    inp: TextIO,
    err: TextIO,
) -> T:
    for _ in range(_MAX_TRIES):
        err.write(prompt)
        err.flush()
        line = inp.readline()
        if not line:
            err.write("\n")
            raise RedisToolkitError(f"cancelled: no {what} chosen (end of input)")
        if not inp.isatty():
            err.write(line if line.endswith("\n") else line + "\n")  # echo piped answers
        value = parse(line.strip())
        if value is not None:
            return value
        err.write(f"  not a valid {what}\n")
    raise RedisToolkitError(f"cancelled: no valid {what} after {_MAX_TRIES} tries")


def _choice(count: int) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        if text.isdigit() and 1 <= int(text) <= count:
            return int(text) - 1
        return None

    return parse


def _gigabytes(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return text if value > 0 else None


def _yes_no(text: str) -> bool | None:
    lowered = text.lower()
    if lowered in ("", "n", "no"):
        return False
    if lowered in ("y", "yes"):
        return True
    return None


def _pick_cache(ns: argparse.Namespace, caches: list[Cache], inp: TextIO, err: TextIO) -> Cache:
    if ns.cache:
        matches = [c for c in caches if c.name == ns.cache]
        if not matches:
            raise ConfigError(f"no cache named {ns.cache!r} in the list")
        return matches[0]
    if len(caches) == 1:
        print(f"Using the only cache, {caches[0].name}.", file=err)
        return caches[0]
    index = _ask(f"Cache (1-{len(caches)}): ", _choice(len(caches)), what="cache", inp=inp, err=err)
    return caches[index]


def _pick_mode(ns: argparse.Namespace, cache: Cache, inp: TextIO, err: TextIO) -> str:
    menu = modes_for(cache)
    if ns.mode:
        mode: str = ns.mode
        if mode == "pinned" and not cache.clustered:
            raise ConfigError(f"--mode pinned needs a clustered cache; {cache.name} is not")
        if mode in ("smart", "tunnel"):
            mode = "smart" if cache.clustered else "tunnel"
        return mode
    print(f"\nWhat to run against {cache.name}:", file=err)
    for number, (_, text) in enumerate(menu, 1):
        print(f"  {number}  {text}", file=err)
    index = _ask(f"Mode (1-{len(menu)}): ", _choice(len(menu)), what="mode", inp=inp, err=err)
    return menu[index][0]


# ------------------------------------------------------------------------------- the mode


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the azure flags (this mode has no server flags: it finds the server)."""
    parser.add_argument("--help", action="help", help="show this help message and exit")
    group = parser.add_argument_group("azure")
    group.add_argument(
        "-s", "--subscription", help="subscription name or ID (default: the az default)"
    )
    group.add_argument("-g", "--resource-group", help="only caches in this resource group")
    group.add_argument("--cache", metavar="NAME", help="the cache to use (no prompt)")
    group.add_argument(
        "--mode",
        choices=("smart", "pinned", "tunnel", "cli", "fill"),
        help="what to run (no prompt): tunnel smart/pinned, tunnel, cli or fill",
    )
    group.add_argument(
        "--auth",
        choices=("auto", "entra", "keys"),
        default="auto",
        help="Microsoft Entra ID token or access key (default: detect)",
    )
    group.add_argument(
        "--print-only",
        action="store_true",
        help="print the command (the key shown as ***) instead of running it",
    )


def _key_hint(cache: Cache) -> str:
    if cache.family == "redis":
        command = ["az", "redis", "list-keys", "--name", cache.name]
    else:
        command = ["az", "redisenterprise", "database", "list-keys", "--cluster-name", cache.name]
    command += ["--resource-group", cache.resource_group, "--query", "primaryKey", "-o", "tsv"]
    return (
        f"The access key is not shown. To run the command, first: "
        f'export {PASSWORD_ENV}="$({shlex.join(command)})"'
    )


def _redis_client_argv(argv: Sequence[str]) -> list[str]:
    found = shutil.which("redis-client")
    if found:
        return [found, *argv[1:]]
    loader = "import sys; from client.main import main; sys.exit(main())"
    return [sys.executable, "-c", loader, *argv[1:]]


def run(ns: argparse.Namespace) -> int:
    """Discover, ask, build and run (or print) the command."""
    inp, out, err = sys.stdin, sys.stdout, sys.stderr
    executable = shutil.which("az")
    if executable is None:
        raise RedisToolkitError(
            "the Azure CLI (az) is not installed: not found on PATH",
            hint="install it: https://learn.microsoft.com/cli/azure/install-azure-cli",
        )
    az = AzCli(executable, ns.subscription)
    account = _account(az)
    where = f"subscription {account.name}"
    if ns.resource_group:
        where += f", resource group {ns.resource_group}"
    caches = discover(az, ns.resource_group, err)
    if not caches:
        raise RedisToolkitError(
            f"no Azure Cache for Redis or Azure Managed Redis caches in {where}",
            hint="check -s/--subscription and -g/--resource-group",
        )
    print(f"Caches in {where}:\n{format_table(caches)}\n", file=err)
    cache = _pick_cache(ns, caches, inp, err)
    mode = _pick_mode(ns, cache, inp, err)
    entra, password = choose_auth(az, cache, ns.auth, err)
    fill_gb: str | None = None
    flush = False
    if mode == "fill":
        fill_gb = _ask("GB to write: ", _gigabytes, what="size", inp=inp, err=err)
        flush = _ask("Flush the cache first? [y/N]: ", _yes_no, what="answer", inp=inp, err=err)
    launch = build_launch(
        cache,
        mode,
        entra=entra,
        password=password,
        tenant=account.tenant if ns.subscription else None,
        fill_gb=fill_gb,
        flush=flush,
    )
    print(f"Authentication: {'Microsoft Entra ID (--entra)' if entra else 'access key'}", file=err)
    if ns.print_only:
        if launch.password is not None:
            print(_key_hint(cache), file=err)
        print(launch.display(), file=out)
        return 0
    print(f"Running: {launch.display()}", file=err)
    env = dict(os.environ)
    env.pop(PASSWORD_ENV, None)
    if launch.password is not None:
        env[PASSWORD_ENV] = launch.password
    argv = _redis_client_argv(launch.argv)
    out.flush()
    err.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise RedisToolkitError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


MODE = Mode(
    name="azure",
    summary="find an Azure cache with the az CLI and open a tunnel, shell or fill on it",
    configure=configure,
    run=run,
)
