import os
import sys

import pytest
import torch

# Test helpers (naive oracles) live beside the tests; importlib mode needs them on sys.path explicitly.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
