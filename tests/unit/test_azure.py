"""``redis-client azure`` against a fake ``az`` first on PATH (tests/fake_az): exact commands."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_az import FakeAz, install

from client.azure import MODE, Cache, build_launch, cache_from_enterprise, caches_from_redis_list
from client.credentials import (
    CredentialProvider,
    add_credential_arguments,
    jwt_claims,
    provider_from_args,
)
from client.errors import ConfigError, ConnectError, RedisToolkitError
from client.main import build_parser, main
from client.options import add_server_arguments, server_options

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fake_az" / "data"
OID = "8b2f1c7e-3a4d-4e5f-9a0b-1c2d3e4f5a6b"
KEYS = {
    "contoso-std": "StdPrimaryKey0123456789abcdefGHIJKLMNOPQRSTu=",
    "contoso-premium-cluster": "PremiumPrimary0123456789abcdefGHIJKLMNOPQRST=",
    "contoso-amr-proxy": "AmrProxyPrimary0123456789abcdefGHIJKLMNOPQRS=",
    "contoso-ent": "EntPrimaryKey0123456789abcdefGHIJKLMNOPQRSTu=",
}
ALL_SECRETS = [*KEYS.values(), "LeakedPrimary0123456789abcdefGHIJKLMNOPQRSTu="]

STD = "contoso-std.redis.cache.windows.net"
PREMIUM = "contoso-premium-cluster.redis.cache.windows.net"
SINGLE = "contoso-premium-single.redis.cache.windows.net"
AMR_OSS = "contoso-amr-oss.westus2.redis.azure.net"
AMR_PROXY = "contoso-amr-proxy.eastus.redis.azure.net"
ENT = "contoso-ent.northeurope.redisenterprise.cache.azure.net"


@pytest.fixture
def az(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAz:
    fake = install(tmp_path)
    for name, value in fake.env("ok").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_CLIENT_PASSWORD", raising=False)
    return fake


def scenario(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("FAKE_AZ_SCENARIO", name)


def azure(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    stdin: str = "",
) -> tuple[str, str]:
    """Run the mode as the entry point would; return (stdout, stderr). Errors propagate."""
    ns = build_parser(MODE).parse_args(list(argv))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        assert MODE.run(ns) == 0
    finally:
        out, err = capsys.readouterr()
        for secret in ALL_SECRETS:
            assert secret not in out + err, "an access key leaked"
    return out, err


def failure(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(RedisToolkitError) as info:
        azure(monkeypatch, capsys, *argv)
    text = str(info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------ the exact commands

EXACT = [
    # Standard, no Entra: access key through the environment.
    ("contoso-std", "cli", f"REDIS_CLIENT_PASSWORD=*** redis-client cli -h {STD} -p 6380 -t"),
    ("contoso-std", "tunnel", f"REDIS_CLIENT_PASSWORD=*** redis-client tunn -h {STD} -p 6380 -t"),
    # Premium, 3 shards, Entra with an access policy: -c, smart or pinned, --entra.
    (
        "contoso-premium-cluster",
        "smart",
        f"redis-client tunn -h {PREMIUM} -p 6380 -t -c --tunnel-mode smart --entra",
    ),
    (
        "contoso-premium-cluster",
        "pinned",
        f"redis-client tunn -h {PREMIUM} -p 6380 -t -c --tunnel-mode pinned --entra",
    ),
    ("contoso-premium-cluster", "cli", f"redis-client cli -h {PREMIUM} -p 6380 -t -c --entra"),
    # Premium, shardCount 0, access keys disabled: Entra, no -c.
    ("contoso-premium-single", "tunnel", f"redis-client tunn -h {SINGLE} -p 6380 -t --entra"),
    ("contoso-premium-single", "smart", f"redis-client tunn -h {SINGLE} -p 6380 -t --entra"),
    # Managed Redis, OSS clustering policy, keys disabled: -c on port 10000, Entra.
    (
        "contoso-amr-oss",
        "smart",
        f"redis-client tunn -h {AMR_OSS} -p 10000 -t -c --tunnel-mode smart --entra",
    ),
    ("contoso-amr-oss", "cli", f"redis-client cli -h {AMR_OSS} -p 10000 -t -c --entra"),
    # Managed Redis, Enterprise clustering policy (a proxy): no -c; keys enabled.
    (
        "contoso-amr-proxy",
        "tunnel",
        f"REDIS_CLIENT_PASSWORD=*** redis-client tunn -h {AMR_PROXY} -p 10000 -t",
    ),
    # Enterprise E10, OSS policy, keys.
    (
        "contoso-ent",
        "pinned",
        f"REDIS_CLIENT_PASSWORD=*** redis-client tunn -h {ENT} -p 10000 -t -c --tunnel-mode pinned",
    ),
]


@pytest.mark.usefixtures("az")
@pytest.mark.parametrize(("cache", "mode", "expected"), EXACT)
def test_exact_command(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cache: str,
    mode: str,
    expected: str,
) -> None:
    out, _ = azure(monkeypatch, capsys, "--print-only", "--cache", cache, "--mode", mode)
    assert out == expected + "\n"


def test_table_lists_both_families(
    az: FakeAz, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = azure(monkeypatch, capsys, "--print-only", "--cache", "contoso-std", "--mode", "cli")
    lines = err.splitlines()
    start = lines.index("Caches in subscription Contoso Dev:")
    header, *rows = lines[start + 1 : start + 8]
    assert header.split() == [
        "#", "NAME", "KIND", "RESOURCE", "GROUP", "REGION", "SKU", "TLS", "PORT", "CLUSTERED",
    ]  # fmt: skip
    expected = [
        ("1", "contoso-std", "Cache for Redis", "rg-web", "East US", "Standard C1", "6380", "no"),
        ("2", "contoso-premium-cluster", "Cache for Redis", "rg-data", "West Europe",
         "Premium P1", "6380", "yes: 3 shards"),
        ("3", "contoso-premium-single", "Cache for Redis", "rg-data", "West Europe",
         "Premium P2", "6380", "no"),
        ("4", "contoso-amr-oss", "Managed Redis", "rg-amr", "West US 2", "Balanced_B5",
         "10000", "yes: OSS policy"),
        ("5", "contoso-amr-proxy", "Managed Redis", "rg-amr", "East US", "Balanced_B1",
         "10000", "no: Enterprise policy (proxy)"),
        ("6", "contoso-ent", "Redis Enterprise", "RG-Legacy", "North Europe", "Enterprise_E10",
         "10000", "yes: OSS policy"),
    ]  # fmt: skip
    assert len(rows) == len(expected)
    for row, cells in zip(rows, expected, strict=True):
        # Columns are aligned: each cell starts where its header starts.
        for cell, column in zip(cells, header_columns(header), strict=True):
            assert row[column:].startswith(cell), (row, cell)


def header_columns(header: str) -> list[int]:
    names = ["#", "NAME", "KIND", "RESOURCE GROUP", "REGION", "SKU", "TLS PORT", "CLUSTERED"]
    return [header.index(name) for name in names]


# ------------------------------------------------------------------------------- prompts


@pytest.mark.usefixtures("az")
def test_prompts_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = azure(monkeypatch, capsys, "--print-only", stdin="2\n2\n")
    assert out == f"redis-client tunn -h {PREMIUM} -p 6380 -t -c --tunnel-mode pinned --entra\n"
    assert "Cache (1-6): " in err
    assert "1  tunnel, smart" in err
    assert "2  tunnel, pinned" in err
    assert "Authentication: Microsoft Entra ID (--entra)" in err


@pytest.mark.usefixtures("az")
def test_non_clustered_menu_has_one_tunnel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = azure(monkeypatch, capsys, "--print-only", stdin="1\n1\n")
    assert out == f"REDIS_CLIENT_PASSWORD=*** redis-client tunn -h {STD} -p 6380 -t\n"
    assert "pinned" not in err
    assert "1  tunnel: the cache as a plain Redis" in err
    assert 'export REDIS_CLIENT_PASSWORD="$(az redis list-keys --name contoso-std' in err


@pytest.mark.usefixtures("az")
def test_fill_prompts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = azure(monkeypatch, capsys, "--print-only", stdin="6\n4\n0.5\ny\n")
    assert out == (
        f"REDIS_CLIENT_PASSWORD=*** redis-client fill -h {ENT} -p 10000 -t -c -d 0.5 -f "
        "--key-size 512 --value-size 262144 -P 8\n"
    )
    out, _ = azure(monkeypatch, capsys, "--print-only", "--cache", "contoso-std", stdin="3\n4\n\n")
    assert out == (
        f"REDIS_CLIENT_PASSWORD=*** redis-client fill -h {STD} -p 6380 -t -d 4 "
        "--key-size 512 --value-size 262144\n"
    )


@pytest.mark.usefixtures("az")
def test_invalid_answers_are_asked_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = azure(monkeypatch, capsys, "--print-only", stdin="9\nabc\n4\n0\n3\n")
    assert out == f"redis-client cli -h {AMR_OSS} -p 10000 -t -c --entra\n"
    assert err.count("not a valid cache") == 2
    assert err.count("not a valid mode") == 1


@pytest.mark.usefixtures("az")
def test_end_of_input_cancels(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert failure(monkeypatch, capsys, "--print-only") == (
        "cancelled: no cache chosen (end of input)"
    )


@pytest.mark.usefixtures("az")
def test_three_bad_answers_give_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RedisToolkitError, match="no valid cache after 3 tries"):
        azure(monkeypatch, capsys, "--print-only", stdin="x\ny\nz\n1\n")


# ------------------------------------------------------------------ filters and auth flags


def test_subscription_and_group_reach_every_az_call(
    az: FakeAz, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario(monkeypatch, "other_tenant")
    out, err = azure(
        monkeypatch, capsys, "--print-only", "-s", "Fabrikam Prod", "-g", "rg-data",
        "--cache", "contoso-premium-cluster", "--mode", "smart",
    )  # fmt: skip
    # Another subscription may be another tenant: the token is asked for that tenant.
    assert out == (
        f"redis-client tunn -h {PREMIUM} -p 6380 -t -c --tunnel-mode smart --entra "
        "--entra-tenant fabrikam-tenant-0000-0000-000000000000\n"
    )
    assert "Caches in subscription Fabrikam Prod, resource group rg-data:" in err
    calls = az.calls()
    assert calls, "az was not called"
    for call in calls:
        assert call[-2:] == ["--subscription", "Fabrikam Prod"], call
    lists = [c for c in calls if c[1] == "list" and c[0] in ("redis", "redisenterprise")]
    assert len(lists) == 2
    for call in lists:
        assert call[2:4] == ["--resource-group", "rg-data"]
    assert not any(c[:2] == ["account", "set"] for c in calls)  # the default is never changed


@pytest.mark.usefixtures("az")
@pytest.mark.parametrize(
    ("cache", "auth", "expected"),
    [
        ("contoso-std", "entra", f"redis-client cli -h {STD} -p 6380 -t --entra"),
        (
            "contoso-premium-cluster",
            "keys",
            f"REDIS_CLIENT_PASSWORD=*** redis-client cli -h {PREMIUM} -p 6380 -t -c",
        ),
    ],
)
def test_auth_override(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cache: str,
    auth: str,
    expected: str,
) -> None:
    out, _ = azure(
        monkeypatch, capsys, "--print-only", "--cache", cache, "--mode", "cli", "--auth", auth
    )
    assert out == expected + "\n"


@pytest.mark.usefixtures("az")
def test_keys_on_a_cache_without_keys_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="contoso-amr-oss has access-key authentication disabled"):
        azure(monkeypatch, capsys, "--cache", "contoso-amr-oss", "--mode", "cli", "--auth", "keys")


@pytest.mark.usefixtures("az")
def test_pinned_needs_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--mode pinned needs a clustered cache"):
        azure(monkeypatch, capsys, "--cache", "contoso-amr-proxy", "--mode", "pinned")


@pytest.mark.usefixtures("az")
def test_unknown_cache_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="no cache named 'nope'"):
        azure(monkeypatch, capsys, "--cache", "nope")


# ------------------------------------------------------------------------------ failures


def test_az_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    text = failure(monkeypatch, capsys, "--print-only")
    assert text.startswith("the Azure CLI (az) is not installed: not found on PATH (hint: ")


@pytest.mark.usefixtures("az")
@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        (
            "not_logged_in",
            [],
            "not logged in to Azure (az account show failed) (hint: run az login)",
        ),
        (
            "login_expired",
            [],
            "not logged in to Azure (listing caches (az redis list) failed) (hint: run az login)",
        ),
        (
            "subscription_not_found",
            ["-s", "no-such-sub"],
            "subscription 'no-such-sub' not found (az account show failed) "
            "(hint: list yours with: az account list -o table)",
        ),
        (
            "no_caches",
            [],
            "no Azure Cache for Redis or Azure Managed Redis caches in subscription Contoso Dev "
            "(hint: check -s/--subscription and -g/--resource-group)",
        ),
        (
            "permission_denied",
            [],
            "permission denied: listing caches (az redis list) (hint: ask for the Reader role "
            "on the subscription or resource group (and Redis Cache Contributor to read access "
            "keys))",
        ),
        (
            "keys_denied",
            ["--cache", "contoso-std", "--mode", "cli"],
            "permission denied: reading the access keys of contoso-std (az redis list-keys) "
            "(hint: ask for the Reader role on the subscription or resource group (and Redis "
            "Cache Contributor to read access keys))",
        ),
    ],
)
def test_az_failures_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    argv: list[str],
    expected: str,
) -> None:
    scenario(monkeypatch, name)
    assert failure(monkeypatch, capsys, "--print-only", *argv) == expected


@pytest.mark.usefixtures("az")
def test_missing_enterprise_extension_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario(monkeypatch, "enterprise_extension_missing")
    out, err = azure(monkeypatch, capsys, "--print-only", stdin="3\n1\n")
    assert out == f"redis-client tunn -h {SINGLE} -p 6380 -t --entra\n"
    assert "warning: listing Azure Managed Redis caches (az redisenterprise list) failed" in err
    assert "contoso-amr-oss" not in err


@pytest.mark.usefixtures("az")
def test_unreadable_keys_fall_back_to_entra_and_stay_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario(monkeypatch, "key_in_error")
    out, err = azure(monkeypatch, capsys, "--print-only", "--cache", "contoso-ent", "--mode", "cli")
    assert out == f"redis-client cli -h {ENT} -p 10000 -t -c --entra\n"
    assert "using Microsoft Entra ID instead" in err
    assert '"primaryKey": "***"' in err


# --------------------------------------------------------------------- running the command


def fake_redis_client(directory: Path) -> Path:
    """An executable ``redis-client`` that records its argv and password variable."""
    record = directory / "launched.json"
    script = directory / "redis-client"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'w') as f:\n"
        "    json.dump({'argv': sys.argv[1:], "
        "'password': os.environ.get('REDIS_CLIENT_PASSWORD')}, f)\n"
    )
    script.chmod(0o755)
    return record


@pytest.mark.parametrize(
    ("cache", "argv", "password"),
    [
        ("contoso-std", ["cli", "-h", STD, "-p", "6380", "-t"], KEYS["contoso-std"]),
        ("contoso-amr-oss", ["cli", "-h", AMR_OSS, "-p", "10000", "-t", "-c", "--entra"], None),
    ],
)
def test_runs_the_command_with_the_key_in_the_environment(
    az: FakeAz, cache: str, argv: list[str], password: str | None
) -> None:
    record = fake_redis_client(az.bin_dir)
    env = dict(os.environ)
    env["REDIS_CLIENT_PASSWORD"] = "stale-value-from-the-shell"  # never passed on with Entra
    loader = "import sys; from client.main import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", loader, "azure", "--cache", cache, "--mode", "cli"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(record.read_text())
    assert launched == {"argv": argv, "password": password}
    assert "Running: " in proc.stderr
    for secret in KEYS.values():
        assert secret not in proc.stdout + proc.stderr
        assert secret not in " ".join(launched["argv"])


def test_entry_point_dispatches_azure(
    az: FakeAz, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["azure", "--print-only", "--cache", "contoso-amr-oss", "--mode", "cli"])
    assert code == 0
    assert capsys.readouterr().out == f"redis-client cli -h {AMR_OSS} -p 10000 -t -c --entra\n"
    scenario(monkeypatch, "not_logged_in")
    assert main(["azure", "--print-only"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "redis-client azure: not logged in to Azure (az account show failed) (hint: run az login)\n"
    )


# ---------------------------------------------------------------------- parsing (pure)


def test_parse_recorded_lists() -> None:
    caches = caches_from_redis_list(json.loads((DATA / "redis_list.json").read_text()))
    assert [(c.name, c.clustered, c.entra_enabled, c.access_keys) for c in caches] == [
        ("contoso-std", False, False, True),
        ("contoso-premium-cluster", True, True, True),
        ("contoso-premium-single", False, True, False),
    ]


@pytest.mark.parametrize("data", [None, {}, [None, 3, "x"], "text"])
def test_garbage_lists_are_empty(data: object) -> None:
    assert caches_from_redis_list(data) == []


def test_enterprise_without_database_uses_defaults() -> None:
    item = json.loads((DATA / "redisenterprise_list.json").read_text())[2]
    cache = cache_from_enterprise(item, [])
    assert (cache.resource_group, cache.port, cache.tls) == ("RG-Legacy", 10000, True)
    assert (cache.clustered, cache.clustering) == (False, "unknown")


def test_plaintext_database_gets_no_tls_flag() -> None:
    item = {"name": "p", "hostName": "p.example", "sku": {"name": "Balanced_B0"}}
    database = [{"name": "default", "port": 10000, "clientProtocol": "Plaintext",
                 "clusteringPolicy": "NoCluster"}]  # fmt: skip
    cache = cache_from_enterprise(item, database)
    launch = build_launch(cache, "tunnel", entra=True)
    assert launch.argv == ("redis-client", "tunn", "-h", "p.example", "-p", "10000", "--entra")


def test_launch_display_never_shows_the_key() -> None:
    cache = Cache(
        name="n", family="redis", kind="k", resource_group="g", region="r", sku="s",
        host="h.example", port=6380,
    )  # fmt: skip
    launch = build_launch(cache, "cli", entra=False, password="k3y with 'quotes'")
    assert launch.display() == "REDIS_CLIENT_PASSWORD=*** redis-client cli -h h.example -p 6380 -t"
    assert "k3y" not in repr(launch.argv)


# -------------------------------------------------------- --entra through the Azure CLI


def entra_provider(*argv: str) -> CredentialProvider:
    parser = argparse.ArgumentParser(add_help=False)
    add_server_arguments(parser)
    add_credential_arguments(parser)
    ns = parser.parse_args(["--entra", *argv])
    return provider_from_args(ns, server_options(ns))


@pytest.mark.usefixtures("az")
async def test_entra_token_from_az(az: FakeAz) -> None:
    cred = await entra_provider("--entra-tenant", "t-1").current()
    assert cred.username == OID
    claims = jwt_claims(cred.password)
    assert claims is not None
    assert claims["aud"] == "https://redis.azure.com"
    assert cred.expires_at == claims["exp"]
    assert cred.refresh_at == claims["exp"] - 420  # 10% of a 70 min token
    assert az.calls()[-1] == [
        "account", "get-access-token", "--resource", "https://redis.azure.com", "-o", "json",
        "--tenant", "t-1",
    ]  # fmt: skip


@pytest.mark.usefixtures("az")
async def test_entra_with_explicit_user() -> None:
    cred = await entra_provider("-u", "app-user").current()
    assert cred.username == "app-user"


@pytest.mark.usefixtures("az")
async def test_entra_not_logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario(monkeypatch, "not_logged_in")
    with pytest.raises(ConnectError) as info:
        await entra_provider().current()
    assert str(info.value) == (
        "az account get-access-token failed (exit 1): ERROR: Please run 'az login' to setup "
        "account. (hint: run az login (the Azure CLI login is missing or expired))"
    )


async def test_entra_without_az(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REDIS_CLIENT_PASSWORD", raising=False)
    with pytest.raises(ConnectError, match="cannot run az"):
        await entra_provider().current()
