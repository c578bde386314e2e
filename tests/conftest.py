import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REFERENCE_KEYS = os.path.join(os.path.dirname(__file__), "data", "reference_keys")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
