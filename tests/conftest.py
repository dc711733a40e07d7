from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
PCAPS = REPO / "pcaps"

# The vendor catalog's cache (sensor/enrich/catalog_cache.py) goes to a scratch directory of this
# run, never the user's home: set before any test module is collected (some build their
# hypothesis strategies from the catalog), and inherited by the sensors the tests start.
_CACHE_DIR = tempfile.TemporaryDirectory(prefix="phi-sensor-cache-")
os.environ["PHI_SENSOR_CACHE_DIR"] = _CACHE_DIR.name
os.environ.pop("CACHE_DIRECTORY", None)

# The loopback servers' fixtures (search_backend, es_proxy, webhook_server, ...) for every test module.
pytest_plugins = ["servers"]

# CI replays the same examples every run; locally hypothesis explores.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def corpus() -> Path:
    if not (CORPUS / "expected.jsonl").exists():
        pytest.skip("shared corpus not present beside the repository")
    return CORPUS


def corpus_file(name: str) -> Path:
    """A capture of the shared corpus, or a clean skip when the corpus is not beside the repository."""
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"corpus capture {name} not available")
    return path


def corpus_expectation(name: str) -> dict:
    """What the reference tools found in a corpus capture (its line of expected.jsonl)."""
    import json

    for line in (CORPUS / "expected.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["pcap"] == name:
            return entry
    raise AssertionError(f"{name} missing from expected.jsonl")


@pytest.fixture(autouse=True, scope="session")
def _operator_places(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test (nor the sensors it starts) reads the machine's /etc/phi-sensor or writes a spool
    under the user's home: an empty configuration directory and a scratch state directory."""
    places = tmp_path_factory.mktemp("places")
    (places / "etc").mkdir()
    os.environ["PHI_SENSOR_CONFIG_DIR"] = str(places / "etc")
    os.environ["XDG_STATE_HOME"] = str(places / "state")
    for systemd_set in ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY"):
        os.environ.pop(systemd_set, None)


class CollectingSink:
    """A sink that takes documents only (as the remote sinks do), keeping them in `docs`."""

    name = "collecting"

    def __init__(self) -> None:
        self.docs: list[dict] = []

    def send(self, doc: dict) -> None:
        self.docs.append(doc)

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def close(self, timeout: float = 0.0) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}
