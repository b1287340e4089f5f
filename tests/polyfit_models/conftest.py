"""Fixtures of the numerics tests (no servers, no databases: these tests are pure); their helpers
are in ``tests/support/numerics.py``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """These tests fit small batches: one torch thread is as fast, and much faster when the
    machine is busy (two threads on two loaded cores spend their time waiting on each other).
    The package itself never sets threads; its caller does, as this fixture does here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
