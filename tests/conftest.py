"""Test defaults: float64, a fixed seed per test, tolerances per dtype in one table."""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # pytest-xdist (pyproject's -n auto): one worker per core, one thread per worker and per subprocess
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

#: Absolute/relative tolerances for geometric identities, per dtype.
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-9, rtol=1e-9)}


@pytest.fixture(autouse=True)
def _float64_and_seed():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def tol():
    """``tol(dtype)`` -> dict(atol=, rtol=) for ``torch.testing.assert_close``."""
    return lambda dtype: TOL[dtype]
