"""Where the parity data lives, and the one comparison every parity test uses.

The reference outputs of the original implementation and the weight-format fixtures ship with
the repository (``tests/data/golden``, ``tests/data/weights``; see ``tests/data/README.md``).
``AFFINITYNET_GOLDEN`` / ``AFFINITYNET_FIXTURES`` point the tests at other folders. Every case
file matching a test's pattern runs; a missing folder, a pattern without any case, or a missing
fixture file is a test *failure*, never a skip, so parity checks cannot silently vanish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
GOLDEN = Path(os.environ.get("AFFINITYNET_GOLDEN") or DATA / "golden")
FIXTURES = Path(os.environ.get("AFFINITYNET_FIXTURES") or DATA / "weights")


@dataclass(frozen=True)
class MissingCase:
    """Stands in for the case files of a pattern that matched nothing; fails the test."""

    reason: str


def golden_cases(pattern: str) -> list:
    """pytest params, one per golden file matching ``pattern`` (a glob), sorted. When the folder
    is absent or nothing matches, one ``MissingCase`` param whose test fails with the reason."""
    if not GOLDEN.is_dir():
        reason = f"golden folder {GOLDEN} does not exist (AFFINITYNET_GOLDEN)"
    else:
        files = sorted(GOLDEN.glob(pattern))
        if files:
            return [pytest.param(f, id=f.stem) for f in files]
        reason = f"no golden case matches {pattern} in {GOLDEN}"
    return [pytest.param(MissingCase(reason), id=f"missing:{pattern}")]


def pytest_runtest_call(item):
    """A test parametrised with a ``MissingCase`` fails (in its call, as a failed test)."""
    callspec = getattr(item, "callspec", None)
    for value in (callspec.params.values() if callspec else ()):
        if isinstance(value, MissingCase):
            pytest.fail(value.reason, pytrace=False)


def fixture_file(name: str) -> Path:
    """Path of a weight fixture; a missing one fails the test."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"weight fixture {path} does not exist (AFFINITYNET_FIXTURES)", pytrace=False)
    return path


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the golden README's relative error).

    Arrays or tensors of the same shape, compared in float64. A reference that is all zeros (or
    empty) has no scale: the comparison is then exact (0.0 when equal, inf otherwise). NaN
    anywhere gives NaN, which fails every ``<=`` check.
    """
    a = _float64(actual)
    b = _float64(expected)
    assert a.shape == b.shape, f"shape {a.shape} != reference shape {b.shape}"
    if b.size == 0:
        return 0.0
    diff = float(np.abs(a - b).max())
    scale = float(np.abs(b).max())
    if scale == 0.0 or not np.isfinite(scale):
        return 0.0 if np.array_equal(a, b) else (diff if np.isnan(diff) else float("inf"))
    return diff / scale


def assert_rel_close(actual, expected, tol: float, what: str = "") -> None:
    """``rel_err(actual, expected) <= tol``, with the error in the message."""
    err = rel_err(actual, expected)
    assert err <= tol, f"{what + ': ' if what else ''}relative error {err:.3g} > {tol:g}"


def _float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
