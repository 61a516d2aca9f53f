"""Shared test helpers: where the golden data and weight fixtures live.

Parity tests find ``../shared/golden`` through ``AFFINITYNET_GOLDEN`` and the weight fixtures
through ``AFFINITYNET_FIXTURES``; both skip with a clear reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("AFFINITYNET_GOLDEN", REPO.parent / "shared" / "golden"))
FIXTURES = Path(os.environ.get("AFFINITYNET_FIXTURES", REPO.parent / "shared" / "fixtures" / "weights"))


def golden_cases(pattern: str) -> list:
    """pytest params for every golden file matching ``pattern`` (a glob), or one skipped param."""
    files = sorted(GOLDEN.glob(pattern)) if GOLDEN.is_dir() else []
    if not files:
        reason = (f"golden folder {GOLDEN} absent (set AFFINITYNET_GOLDEN)" if not GOLDEN.is_dir()
                  else f"no golden case matches {pattern} in {GOLDEN}")
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="absent")]
    return [pytest.param(f, id=f.stem) for f in files]


def fixture_file(name: str) -> Path:
    """Path of a weight fixture; skips the test when the fixtures folder is absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"weight fixture {path} absent (set AFFINITYNET_FIXTURES)")
    return path
