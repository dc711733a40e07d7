"""The systemd unit: hardened as documented, its command line accepted by `phi-sensor live`, its
stats file where `phi-sensor status` looks, and, where systemd-analyze is installed, verified and
scored by systemd's own tools."""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from sensor.app.assemble import spool_dir
from sensor.app.live.status import default_stats_file
from sensor.cli import _add_common, add_live_arguments
from sensor.enrich.catalog_cache import cache_dir

SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "phi-sensor.service"
MAX_EXPOSURE = 3.0


def settings(path: Path) -> dict[str, list[str]]:
    """Key -> values in order (systemd keys may repeat), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def environment_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return settings(UNIT)


def one(unit: dict[str, list[str]], key: str) -> str:
    assert len(unit.get(key, [])) == 1, f"{key}: expected exactly one setting"
    return unit[key][0]


def test_runs_as_a_dedicated_user_with_only_the_capture_capabilities(unit: dict[str, list[str]]) -> None:
    assert one(unit, "User") == one(unit, "Group") == "phi-sensor"
    assert set(one(unit, "AmbientCapabilities").split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(one(unit, "CapabilityBoundingSet").split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert one(unit, "NoNewPrivileges") == "yes"
    sysusers = (SYSTEMD / "phi-sensor.sysusers").read_text().splitlines()
    entries = [shlex.split(line) for line in sysusers if line and not line.startswith("#")]
    assert entries == [["u", "phi-sensor", "-", "phi-egress-sensor", "/var/lib/phi-sensor", "/usr/sbin/nologin"]]


def test_filesystem_network_and_system_calls_are_fenced(unit: dict[str, list[str]]) -> None:
    assert one(unit, "ProtectSystem") == "strict"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "RestrictNamespaces", "MemoryDenyWriteExecute", "LockPersonality"):
        assert one(unit, key) == "yes", key
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX"}
    filters = unit["SystemCallFilter"]
    assert filters[0] == "@system-service" and all(f.startswith("~") for f in filters[1:])
    assert one(unit, "StateDirectory") == one(unit, "RuntimeDirectory") == "phi-sensor"
    assert re.fullmatch(r"\d+[KMG]", one(unit, "MemoryMax"))


def test_lifecycle_reload_restart_and_readiness(unit: dict[str, list[str]]) -> None:
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "Type") == "notify" and one(unit, "NotifyAccess") == "main"
    assert one(unit, "KillMode") == "mixed"  # SIGTERM to the main process only: it stops the workers itself


def test_exec_start_is_a_live_command_line_with_the_status_default(unit: dict[str, list[str]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    environment = environment_file(SYSTEMD / "phi-sensor.env")
    assert {"PHI_SENSOR_INTERFACE", "PHI_SENSOR_CONFIG", "PHI_SENSOR_ARGS"} <= environment.keys()
    environment["PHI_SENSOR_ARGS"] = "--workers 2 --output /var/log/phi-sensor/alerts.jsonl"
    command = one(unit, "ExecStart")
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], command)
    expanded = re.sub(r"\$(\w+)", lambda m: environment[m.group(1)], expanded)
    program, subcommand, *argv = shlex.split(expanded)
    assert program.endswith("/phi-sensor") and subcommand == "live"
    parser = argparse.ArgumentParser()
    _add_common(parser)
    add_live_arguments(parser)
    args = parser.parse_args(argv)
    assert args.interface == "eth0" and args.workers == 2 and args.config == Path("/etc/phi-sensor/sensor.yaml")
    # `phi-sensor status` run by an administrator finds the file the service writes.
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/phi-sensor")
    assert args.stats_file == default_stats_file() == Path("/run/phi-sensor/stats.json")
    # The spool goes to the StateDirectory= systemd hands over.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/phi-sensor")
    assert args.spool_dir is None and spool_dir(args) == Path("/var/lib/phi-sensor/spool")
    assert one(unit, "StateDirectory") == "phi-sensor" and one(unit, "ConfigurationDirectory") == "phi-sensor"
    assert one(unit, "LogsDirectory") == "phi-sensor"
    # The parsed catalog is kept in the CacheDirectory= systemd hands over (the home is not writable).
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/phi-sensor")
    monkeypatch.delenv("PHI_SENSOR_CACHE_DIR", raising=False)
    assert one(unit, "CacheDirectory") == "phi-sensor" and cache_dir() == Path("/var/cache/phi-sensor")
    assert program == "/opt/phi-sensor/bin/phi-sensor"  # the virtual environment of docs/install.md


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    program = shutil.which("phi-sensor") or str(Path(sys.executable))
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text().replace("/opt/phi-sensor/bin/phi-sensor", program))
    return path


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", str(runnable_unit(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    help_text = subprocess.run(["systemd-analyze", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze cannot score a unit file offline")
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(runnable_unit(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure < MAX_EXPOSURE
