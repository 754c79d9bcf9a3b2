from __future__ import annotations

import pytest

from edgeprune.benchmarks.units import fmt_bytes, parse_bytes, parse_duration_ms, parse_fraction
from edgeprune.errors import EdgepruneError


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), ("12.5%", 0.125), ("0%", 0.0)])
def test_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "five", "5ms", "-1%", ""])
def test_fraction_rejects(text):
    with pytest.raises(EdgepruneError):
        parse_fraction(text)


@pytest.mark.parametrize("text, ms", [("30ms", 30), ("0.03s", 30), ("500us", 0.5), ("1e3us", 1)])
def test_duration(text, ms):
    assert parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["30min", "0ms", "fast", "30", "1e400ms", "1e400s"])
def test_duration_rejects(text):
    with pytest.raises(EdgepruneError):
        parse_duration_ms(text)


@pytest.mark.parametrize("text, n", [("200MB", 200 * 10**6), ("200MiB", 200 * 2**20),
                                     ("1.5GB", 1_500_000_000), ("4096", 4096), ("1k", 1000)])
def test_bytes(text, n):
    assert parse_bytes(text) == n


def test_bytes_rejects_and_zero():
    with pytest.raises(EdgepruneError):
        parse_bytes("200 parsecs")
    with pytest.raises(EdgepruneError):
        parse_bytes("0MB")
    assert parse_bytes("0", allow_zero=True) == 0
    assert fmt_bytes(3 * 2**20) == "3.00 MiB"
