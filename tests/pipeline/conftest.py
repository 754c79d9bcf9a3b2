"""Fixtures of the pipeline tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The models are tiny: one thread is as fast, and two OpenMP threads on busy shared cores crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
