"""Parsing of the human-written quantities the gate accepts: ``5%``, ``30ms``, ``200MB``."""

from __future__ import annotations

import math
import re

from edgeprune.errors import EdgepruneError

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_TIME_UNITS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_BYTE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 10**3, "m": 10**6, "g": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    m = re.fullmatch(_NUM + r"\s*([a-zA-Zµ%]*)", text.strip())
    if not m:
        raise EdgepruneError(f"cannot read {what} {text!r}; write it like {example}")
    return float(m.group(1)), m.group(2)


def parse_fraction(text: str, what: str = "tolerance") -> float:
    """``"5%"`` or ``"0.05"`` -> 0.05. A bare number of 1 or more is refused as ambiguous."""
    value, unit = _split(text, what, "5% or 0.05")
    if unit == "%":
        value /= 100.0
    elif unit:
        raise EdgepruneError(f"cannot read {what} {text!r}; write it like 5% or 0.05")
    elif value >= 1:
        raise EdgepruneError(f"{what} {text!r} is ambiguous; write {text}% or {value / 100:g}")
    if not 0 <= value < 10:
        raise EdgepruneError(f"{what} {text!r} is out of range")
    return value


def parse_duration_ms(text: str, what: str = "budget") -> float:
    """``"30ms"``, ``"0.03s"``, ``"500us"`` -> milliseconds; a unit is required."""
    value, unit = _split(text, what, "30ms or 0.03s")
    unit = unit.lower() if unit != "µs" else unit
    if not unit:   # "30" could mean ms or s: a budget that is silently a thousand times off is worse than an error
        raise EdgepruneError(f"{what} {text!r} has no unit; write {text}ms or {text}s")
    if unit not in _TIME_UNITS:
        raise EdgepruneError(f"unknown time unit in {what} {text!r}; use ms, s or us")
    ms = value * _TIME_UNITS[unit]
    if not math.isfinite(ms) or ms <= 0:
        raise EdgepruneError(f"{what} must be a positive, finite time, got {text!r}")
    return ms


def parse_bytes(text: str, what: str = "memory limit", allow_zero: bool = False) -> int:
    """``"200MB"`` (10^6), ``"200MiB"`` (2^20), ``"1.5GB"``, ``"4096"`` -> bytes."""
    value, unit = _split(text, what, "200MB or 192MiB")
    unit = unit.lower()
    if unit not in _BYTE_UNITS:
        raise EdgepruneError(f"unknown size unit in {what} {text!r}; use B, KB, MB, GB, KiB, MiB, GiB")
    n = int(round(value * _BYTE_UNITS[unit]))
    if n < 0 or n == 0 and not allow_zero:
        raise EdgepruneError(f"{what} must be positive, got {text!r}")
    return n


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if x < 1000 else f"{x:.0f}"
