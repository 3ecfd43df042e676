"""Fixtures shared by the unit tests. Small builders live in ``tiny_models.py``, imported as
``from tiny_models import ...`` (pytest puts test/unit on sys.path)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch intra-op thread for the whole run: the CI machine is two shared cores, where
    oversubscribed intra-op threads only spin-wait (tiny convs ran ~20x slower with the default)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
