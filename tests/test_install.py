"""Installed the ordinary way: the wheel and sdist carry the data, the sensor runs from any directory,
finds its configuration and state where operators expect them, validates outputs once, rotates
its files on SIGHUP and time-stamps its own log."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PCAPS, REPO

from sensor.enrich.vendors import VendorCatalog
from sensor.output import jsonl
from sensor.output.jsonl import JsonlSink
from sensor.paths import DATA_DIR, VENDORS_DIR, config_dir, default_config_file, default_spool_dir, state_dir

DEMO = PCAPS / "demo.pcap"
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
DEMO_RULES = {"tracker-egress-no-baa", "phi-in-tracker-payload", "plaintext-phi"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z phi-sensor: ")
# What an sdist needs to build (the rest of the checkout is tests, bench and history).
SOURCE_PARTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "sensor", "deploy", "docs",
                "pcaps/demo.pcap")
DATA_FILES = ("signatures/README.md", "signatures/vendors/meta-pixel.yaml", "signatures/phi/conditions.txt",
              "signatures/phi/medications.txt", "signatures/phi/stoplist.txt", "elasticsearch/ilm-policy.json",
              "elasticsearch/ism-policy.json", "elasticsearch/component-template-ecs.json",
              "elasticsearch/index-template-alerts.json", "kibana/phi-sensor.ndjson")


def sensor(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **(env or {})})


def alerts(stdout: str) -> list[dict]:
    return [doc for doc in map(json.loads, filter(None, stdout.splitlines())) if doc["event"]["kind"] == "alert"]


# -- the package carries its data ------------------------------------------------------------------
def test_bundled_data_is_inside_the_package() -> None:
    assert DATA_DIR.is_relative_to(Path(sys.modules["sensor"].__file__).parent)
    for name in DATA_FILES:
        assert (DATA_DIR / name).is_file(), name
    assert len(list(VENDORS_DIR.glob("*.yaml"))) == len(VendorCatalog.load())


def test_replay_from_an_unrelated_directory(tmp_path: Path) -> None:
    shutil.copy(DEMO, tmp_path / "demo.pcap")
    env = {"PYTHONPATH": str(REPO)}
    result = sensor("replay", "demo.pcap", "--quiet", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert {doc["rule"]["id"] for doc in alerts(result.stdout)} == DEMO_RULES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pcap"]  # no spool, nothing else


def _copy_source(target: Path) -> Path:
    for part in SOURCE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / part)
    return target


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, and the wheel built from it, as `python -m build` makes them."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("dist")
    source = _copy_source(work / "source")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(work / "out"), str(source)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "Could not find a version" in result.stdout + result.stderr:
        pytest.skip("no package index to install the build backend from")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"sdist": next((work / "out").glob("*.tar.gz")), "wheel": next((work / "out").glob("*.whl"))}


def test_wheel_carries_the_data_and_no_checkout_paths(distributions: dict[str, Path]) -> None:
    names = zipfile.ZipFile(distributions["wheel"]).namelist()
    for name in DATA_FILES:
        assert f"sensor/data/{name}" in names, name
    vendors = [n for n in names if n.startswith("sensor/data/signatures/vendors/") and n.endswith(".yaml")]
    assert len(vendors) == len(list(VENDORS_DIR.glob("*.yaml")))
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"sensor"}  # no signatures/, deploy/
    metadata = zipfile.ZipFile(distributions["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("dpkt", "scapy", "tldextract")) for r in runtime), runtime


def test_sdist_carries_the_data_and_the_deploy_files(distributions: dict[str, Path]) -> None:
    with tarfile.open(distributions["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for name in DATA_FILES:
        assert f"sensor/data/{name}" in names, name
    for name in ("deploy/systemd/phi-sensor.service", "deploy/logrotate/phi-sensor",
                 "deploy/config/sensor.example.yaml", "docs/install.md", "pcaps/demo.pcap"):
        assert name in names, name


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_from_anywhere(distributions: dict[str, Path], tmp_path: Path) -> None:
    """pip wheel . -> a new virtual environment -> replay, report, check-config, setup --dry-run."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    install = subprocess.run([str(home / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                              str(distributions["wheel"])], capture_output=True, text=True, timeout=900, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    where = tmp_path / "elsewhere"
    where.mkdir()
    shutil.copy(DEMO, where / "demo.pcap")
    shutil.copy(EXAMPLE_CONFIG, where / "site.yaml")
    program = str(home / "bin" / "phi-sensor")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([program, *argv], capture_output=True, text=True, timeout=120, cwd=where, env=env)

    replay = run("replay", "demo.pcap", "--config", "site.yaml", "--quiet")
    assert replay.returncode == 0, replay.stderr
    assert {doc["rule"]["id"] for doc in alerts(replay.stdout)} == DEMO_RULES
    report = run("report", "demo.pcap", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert "Mixpanel" in report.stdout
    check = run("check-config", "site.yaml")
    bundled = len(list(VENDORS_DIR.glob("*.yaml")))
    assert check.returncode == 0 and f"{bundled} vendors" in check.stdout, check.stderr
    setup = run("setup", "--elasticsearch", "http://127.0.0.1:9", "--kibana", "http://127.0.0.1:9", "--dry-run")
    assert setup.returncode == 0, setup.stderr
    assert "_index_template/phi_sensor-default-alert " in setup.stdout and "_ilm/policy/" in setup.stdout
    # Nothing was read from the checkout: the installed package's own data did it all.
    where_from = run("check-config", "site.yaml", "--signatures", str(tmp_path / "absent"))
    assert where_from.returncode == 2 and "absent" in where_from.stderr
    assert sorted(p.name for p in where.iterdir()) == ["demo.pcap", "site.yaml"]
    # The compiled part came whole (a C file left out of the build leaves it unloadable, and the
    # sensor quietly in pure Python).
    if importlib.util.find_spec("sensor._fast") is not None:
        loads = subprocess.run([str(home / "bin" / "python"), "-c", "import sensor._fast"], capture_output=True,
                               text=True, timeout=60, cwd=where, env=env)
        assert loads.returncode == 0, loads.stderr


def test_every_c_file_is_built() -> None:
    """setup.py names the compiled part's sources one by one: a new file must join them."""
    listed = re.search(r"for name in \(([^)]*)\)", (REPO / "setup.py").read_text())
    assert listed is not None
    names = set(re.findall(r'"(\w+)"', listed.group(1)))
    assert names == {path.stem for path in (REPO / "sensor" / "_fast").glob("*.c")}


# -- the places operators expect -------------------------------------------------------------------
def test_system_config_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PHI_SENSOR_CONFIG_DIR")
    assert config_dir() == Path("/etc/phi-sensor")
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", "/etc/phi-sensor:/etc/other")
    assert config_dir() == Path("/etc/phi-sensor")
    monkeypatch.setenv("PHI_SENSOR_CONFIG_DIR", str(tmp_path))
    assert default_config_file() is None
    (tmp_path / "sensor.yaml").write_text("sensor: {name: from-etc}\n")
    assert default_config_file() == tmp_path / "sensor.yaml"


def test_state_dir_for_a_service_and_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/phi-sensor")
    assert default_spool_dir() == Path("/var/lib/phi-sensor/spool")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_spool_dir() == tmp_path / "xdg" / "phi-sensor" / "spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "phi-sensor"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "phi-sensor"


def test_config_from_the_system_directory_when_none_is_given(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    env = {"PYTHONPATH": str(REPO), "PHI_SENSOR_CONFIG_DIR": str(etc)}
    plain = sensor("replay", DEMO, "--quiet", cwd=tmp_path, env=env)
    assert {doc["observer"]["name"] for doc in alerts(plain.stdout)} != {"from-etc"}
    (etc / "sensor.yaml").write_text("sensor: {name: from-etc}\nrules: {plaintext-phi: {enabled: false}}\n")
    configured = sensor("replay", DEMO, "--quiet", cwd=tmp_path, env=env)
    assert configured.returncode == 0, configured.stderr
    found = alerts(configured.stdout)
    assert found and {doc["observer"]["name"] for doc in found} == {"from-etc"}
    assert "plaintext-phi" not in {doc["rule"]["id"] for doc in found}
    check = sensor("check-config", cwd=tmp_path, env=env)
    assert check.returncode == 0 and check.stdout.startswith(f"{etc / 'sensor.yaml'}: ok"), check.stderr
    # An explicit --config wins over the system file.
    explicit = sensor("replay", DEMO, "--quiet", "--config", EXAMPLE_CONFIG, cwd=tmp_path, env=env)
    assert {doc["observer"]["name"] for doc in alerts(explicit.stdout)} == {"gw-1"}


def test_spool_goes_to_the_state_directory_never_the_working_directory(tmp_path: Path) -> None:
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    env = {"PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(state)}
    result = sensor("replay", DEMO, "--quiet", "--output", "webhook=http://127.0.0.1:9/hook", "--flush-timeout", "0.01",
                    cwd=work, env=env)
    assert result.returncode == 4, result.stderr  # nothing listens on the discard port: spooled
    assert list(work.iterdir()) == []
    assert list((state / "phi-sensor" / "spool").glob("webhook-*.db"))
    service = tmp_path / "service-state"
    result = sensor("replay", DEMO, "--quiet", "--output", "webhook=http://127.0.0.1:9/hook", "--flush-timeout", "0.01",
                    cwd=work, env={**env, "STATE_DIRECTORY": str(service)})
    assert result.returncode == 4 and list((service / "spool").glob("webhook-*.db"))


# -- signatures: an operator's overlay over the bundled set ----------------------------------------
def _vendor_file(name: str, domain: str, vendor_id: str) -> str:
    return (f"name: {name}\nid: {vendor_id}\nowner: Example\ncategory: analytics\ndomains: [{domain}]\n"
            f"baa: {{stance: unknown, summary: not reviewed}}\n")


def test_overlay_adds_and_replaces_vendors(tmp_path: Path) -> None:
    (tmp_path / "acme-metrics.yaml").write_text(_vendor_file("Acme Metrics", "acme-metrics.com", "acme-metrics"))
    (tmp_path / "mixpanel.yaml").write_text(_vendor_file("Mixpanel Local", "mixpanel.com", "mixpanel"))
    bundled = VendorCatalog.load()
    merged = VendorCatalog.with_overlay(tmp_path)
    assert len(merged) == len(bundled) + 1
    assert merged.match_host("t.acme-metrics.com").id == "acme-metrics"
    assert merged.match_host("api.mixpanel.com").name == "Mixpanel Local"
    assert merged.match_host("www.facebook.com").id == bundled.match_host("www.facebook.com").id
    # A copy of the whole signatures tree is read from its vendors/ directory.
    tree = tmp_path / "tree"
    (tree / "vendors").mkdir(parents=True)
    shutil.copy(tmp_path / "acme-metrics.yaml", tree / "vendors")
    assert VendorCatalog.with_overlay(tree).match_host("acme-metrics.com").id == "acme-metrics"


def test_overlay_errors_name_the_overlay_file(tmp_path: Path) -> None:
    (tmp_path / "segment.yaml").write_text(_vendor_file("Acme", "acme.com", "segment").replace("unknown", "maybe"))
    result = sensor("check-config", "--signatures", tmp_path, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert str(tmp_path / "segment.yaml") in result.stderr and "baa.stance" in result.stderr


def test_signatures_from_the_config_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "acme-metrics.yaml").write_text(
        _vendor_file("Acme Metrics", "acme-metrics.com", "acme-metrics"))
    config = tmp_path / "sensor.yaml"
    config.write_text("sensor: {signatures: mine}\n")
    result = sensor("check-config", config, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert f"{len(VendorCatalog.load()) + 1} vendors" in result.stdout


# -- one validation --------------------------------------------------------------------------------
PROBLEMS = {
    "api key variable unset": (
        "outputs: [{type: elasticsearch, url: 'http://127.0.0.1:9', auth: {api_key_env: PHI_TEST_UNSET_KEY}}]",
        "outputs[0].auth.api_key_env", "PHI_TEST_UNSET_KEY unset"),
    "pagerduty key file missing": (
        "outputs: [{type: pagerduty, routing_key_file: /nonexistent/pd.key}]",
        "outputs[0].routing_key_file", "/nonexistent/pd.key"),
    "pagerduty default variable unset": (
        "outputs: [{type: pagerduty}]", "outputs[0].routing_key_env", "PHI_SENSOR_PAGERDUTY_ROUTING_KEY unset"),
    "file under a file": (
        "outputs: [{type: jsonl, path: '{tmp}/plain/alerts.jsonl'}]", "outputs[0].path", "is not a directory"),
    "file is a directory": ("outputs: [{type: jsonl, path: '{tmp}'}]", "outputs[0].path", "a directory"),
    "spool under a file": (
        "outputs: [{type: webhook, url: 'http://127.0.0.1:9/'}]", "spool_dir", "is not a directory"),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_check_config_fails_exactly_where_replay_fails(tmp_path: Path, problem: str) -> None:
    text, key, found = PROBLEMS[problem]
    (tmp_path / "plain").write_text("a file, not a directory")
    config = tmp_path / "sensor.yaml"
    config.write_text(text.replace("{tmp}", str(tmp_path)) + "\n")
    env = {"PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(tmp_path / "plain")}
    env_without = {k: v for k, v in os.environ.items() if k not in ("PHI_TEST_UNSET_KEY", "PHI_SENSOR_PAGERDUTY_ROUTING_KEY")}
    results = {}
    for command in (["check-config", config], ["replay", DEMO, "--config", config, "--quiet"]):
        result = subprocess.run([sys.executable, "-m", "sensor", *map(str, command)], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path, env={**env_without, **env})
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and LOG_LINE.match(lines[0]) and "Traceback" not in result.stderr, result.stderr
        results[command[0]] = LOG_LINE.sub("", lines[0])
    assert results["check-config"] == results["replay"]
    line = results["replay"]
    assert line.startswith(f"{config}: {key}: expected "), line
    assert "found" in line and found in line, line


def test_unwritable_output_is_a_usage_error_not_an_internal_one(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    target = tmp_path / "plain" / "alerts.jsonl"
    for command in (["replay", DEMO, "--quiet"], ["check-config"]):
        result = sensor(*command, "--output", target, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 2, result.stderr
        assert f"command line: --output {target}: expected a writable file, found {target}" in result.stderr


@pytest.mark.parametrize("spec", ["foo=bar", "elastic=http://127.0.0.1:9200", "json=alerts.jsonl"])
def test_unknown_output_name_is_an_error_not_a_file(tmp_path: Path, spec: str) -> None:
    for command in (["replay", DEMO, "--quiet"], ["check-config"]):
        result = sensor(*command, "--output", spec, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 2, result.stderr
        assert f"found {spec.split('=')[0]!r}" in result.stderr and "jsonl=PATH" in result.stderr
    assert list(tmp_path.iterdir()) == []
    ok = sensor("replay", DEMO, "--quiet", "--output", "jsonl=a=b.jsonl", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert ok.returncode == 0 and alerts((tmp_path / "a=b.jsonl").read_text())


# -- SIGHUP reopens the JSON-lines files -----------------------------------------------------------
@pytest.fixture
def hangup_handler() -> Iterator[None]:
    """Give each test the process's original SIGHUP disposition back."""
    previous = signal.getsignal(signal.SIGHUP)
    installed = jsonl._handler_installed
    jsonl._handler_installed = False
    yield
    signal.signal(signal.SIGHUP, previous)
    jsonl._handler_installed = installed


def _lines(path: Path) -> list[int]:
    return [json.loads(line)["n"] for line in path.read_text().splitlines()]


def test_sighup_after_a_rename_writes_to_a_new_file(tmp_path: Path, hangup_handler: None) -> None:
    output = tmp_path / "alerts.jsonl"
    sink = JsonlSink(output)
    for n in range(3):
        sink.send({"n": n})
    output.rename(tmp_path / "alerts.jsonl.1")
    sink.send({"n": 3})  # before the signal: still the renamed file
    os.kill(os.getpid(), signal.SIGHUP)
    for n in range(4, 6):
        sink.send({"n": n})
    sink.close()
    assert _lines(tmp_path / "alerts.jsonl.1") == [0, 1, 2, 3]
    assert _lines(output) == [4, 5]
    assert sink.stats()["reopened"] == 1


def test_sighup_keeps_what_ran_before(tmp_path: Path, hangup_handler: None) -> None:
    """live's own SIGHUP handler (reload) still runs after the files are reopened."""
    seen = []
    signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    sink = JsonlSink(tmp_path / "a.jsonl")
    os.kill(os.getpid(), signal.SIGHUP)
    sink.send({"n": 1})
    sink.close()
    assert seen == [signal.SIGHUP] and sink.stats()["reopened"] == 1


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_logrotate_snippet_rotates_without_losing_a_line(tmp_path: Path, hangup_handler: None) -> None:
    """The shipped snippet, pointed at a scratch directory and at this process."""
    import grp
    import pwd

    logs = tmp_path / "logs"
    logs.mkdir()
    snippet = (REPO / "deploy" / "logrotate" / "phi-sensor").read_text()
    assert "/var/log/phi-sensor/*.jsonl" in snippet and "systemctl reload phi-sensor.service" in snippet
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    snippet = (snippet.replace("/var/log/phi-sensor", str(logs))
               .replace("create 0640 phi-sensor phi-sensor", f"create 0640 {user} {group}")
               .replace("systemctl reload phi-sensor.service", f"kill -HUP {os.getpid()}"))
    conf = tmp_path / "logrotate.conf"
    conf.write_text(snippet)
    sink = JsonlSink(logs / "alerts.jsonl")
    for n in range(3):
        sink.send({"n": n})
    sink.flush()
    result = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for n in range(3, 5):
        sink.send({"n": n})
    sink.close()
    rotated = [p for p in logs.iterdir() if p.name != "alerts.jsonl"]
    assert len(rotated) == 1 and rotated[0].name.startswith("alerts.jsonl-")  # dateext, compressed next time
    assert _lines(rotated[0]) == [0, 1, 2] and _lines(logs / "alerts.jsonl") == [3, 4]


# -- the sensor's own log --------------------------------------------------------------------------
def test_log_lines_carry_an_iso_time_stamp(tmp_path: Path) -> None:
    result = sensor("replay", tmp_path / "absent.pcap", "--quiet", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 3
    (line,) = result.stderr.splitlines()
    assert LOG_LINE.match(line) and "absent.pcap" in line


@pytest.mark.parametrize("option", [["--log-format", "json"], ["--log-format=json"]])
def test_log_format_json(tmp_path: Path, option: list[str]) -> None:
    result = sensor(*option, "replay", tmp_path / "absent.pcap", "--quiet", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 3
    (line,) = result.stderr.splitlines()
    doc = json.loads(line)
    assert doc["log.level"] == "error" and "absent.pcap" in doc["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["@timestamp"])
