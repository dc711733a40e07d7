#!/usr/bin/env python3
"""Coverage-guided fuzzing of one target with atheris (libFuzzer).

    python fuzz/run.py TARGET [CORPUS_DIR] [libFuzzer options, e.g. -runs=100000 -max_total_time=600]
    python fuzz/run.py --list

The corpus directory is seeded with the target's valid inputs when empty. A failing input is
written as crash-<sha1> (in -artifact_prefix, default the working directory): copy it to
tests/data/fuzz/TARGET/ and tests/test_fuzz.py replays it from then on.
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["sensor", "targets"]):
    import targets


def main() -> None:
    if sys.argv[1:2] == ["--list"]:
        print("\n".join(targets.TARGETS))
        return
    name, options = sys.argv[1], sys.argv[2:]
    corpus = next((Path(arg) for arg in options if not arg.startswith("-")), None)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for index, seed in enumerate(targets.seeds(name)):
                (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *options], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
