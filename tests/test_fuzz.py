"""The fuzz targets (fuzz/targets.py): every input a fuzzer ever failed on is replayed here, and a
short coverage-guided run of each target (atheris) checks nothing new breaks. The long run is in
docs/hardening.md."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "fuzz"))
import targets  # noqa: E402

REGRESSIONS = REPO / "tests" / "data" / "fuzz"
CASES = sorted(path for path in REGRESSIONS.glob("*/*") if path.is_file()) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name[:16]}" for p in CASES])
def test_inputs_that_once_failed_pass(path: Path) -> None:
    targets.replay(path.parent.name, path.read_bytes())


def test_every_target_takes_its_seeds_and_noise() -> None:
    import random

    rnd = random.Random(15)
    for name, target in targets.TARGETS.items():
        for seed in targets.seeds(name):
            target(seed)
        for _ in range(50):
            target(rnd.randbytes(rnd.randrange(600)))


@pytest.mark.fuzz
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_short_coverage_guided_run(name: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "run.py"), name, str(tmp_path / "corpus"),
         "-runs=1500", "-max_total_time=2", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=60,
    )
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    assert run.returncode == 0 and not crashes, run.stderr[-3000:]
