import os
import sys

# The tests run against the installed ganprune, as its users run it. `python -m pytest` puts the checkout first
# on sys.path, and the package folder there lacks agents/ and search_spaces/: a plain install carries them
# inside the package, an editable one maps them (setup.cfg's package_dir). Subprocesses the tests start get
# PYTHONSAFEPATH for the same reason (python -c / -m would put their working directory first).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _CHECKOUT]
os.environ["PYTHONSAFEPATH"] = "1"

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads starve every
# other process (a 2-thread training step measured 0.6 vs 69 steps/s with another job running). Must be set
# before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REFERENCE_KEYS = os.path.join(os.path.dirname(__file__), "data", "reference_keys")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny nets: a second thread only adds synchronisation (10× slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
