"""Where a latency profile was fitted: the machine and runtime facts that change onnxruntime's kernels.

A profile's constants hold for the machine they were fitted on. A :class:`Fingerprint` records what
decides which kernels onnxruntime runs and how fast: the architecture, the CPU, the instruction-set
features MLAS dispatches on (AVX2, AVX-512, VNNI, AMX on x86; NEON, dot-product, fp16, i8mm, SVE on
Arm: ``ort_runner.KERNEL_FEATURES``), the core count and the onnxruntime version. ``edgeprune
calibrate`` writes the fingerprint of the machine it measured into the profile (``[fingerprint]``);
the bundled board profiles carry their cores' features from Arm's manuals. A prediction for the
machine at hand (the ``host`` profile) lists every way this machine differs from the one the
profile was fitted on (:func:`differences`), so a figure fitted elsewhere is never passed off as
this machine's. A field left out of a profile (unknown when it was fitted) is not compared.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

import onnxruntime as ort

from edgeprune.benchmarks.ort_runner import KERNEL_FEATURES, cpu_features, cpu_model
from edgeprune.errors import EdgepruneError

KNOWN_FEATURES = frozenset(KERNEL_FEATURES.values())


@dataclass(frozen=True)
class Fingerprint:
    machine: str = ""                  # x86_64, aarch64 (platform.machine)
    cpu: str = ""                      # the CPU's name (x86 brand string; Arm core and board)
    features: tuple[str, ...] | None = None   # kernel-relevant ISA features; None: not recorded
    cores: int | None = None
    onnxruntime: str = ""
    source: str = ""                   # how it was obtained, in words

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features) if self.features is not None else None
        return {k: v for k, v in d.items() if v not in ("", None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<dict>") -> "Fingerprint":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise EdgepruneError(f"{where}: unknown key(s) {', '.join(unknown)} in [fingerprint]; "
                                 f"known: {', '.join(cls.__dataclass_fields__)}")
        for key in ("machine", "cpu", "onnxruntime", "source"):
            if not isinstance(d.get(key, ""), str):
                raise EdgepruneError(f"{where}: [fingerprint] {key} must be a string")
        cores = d.get("cores")
        if cores is not None and (not isinstance(cores, int) or isinstance(cores, bool) or cores < 1):
            raise EdgepruneError(f"{where}: [fingerprint] cores must be a positive integer, got {cores!r}")
        features = d.get("features")
        if features is not None:
            if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
                raise EdgepruneError(f"{where}: [fingerprint] features must be a list of strings")
            bad = sorted(set(features) - KNOWN_FEATURES)
            if bad:
                raise EdgepruneError(f"{where}: [fingerprint] unknown feature(s) {', '.join(bad)}; "
                                     f"known: {', '.join(sorted(KNOWN_FEATURES))}")
            features = tuple(sorted(set(features)))
        return cls(d.get("machine", ""), d.get("cpu", ""), features, cores, d.get("onnxruntime", ""),
                   d.get("source", ""))

    @classmethod
    def from_facts(cls, facts: dict[str, Any], source: str) -> "Fingerprint":
        """From an ``ort_runner`` result's host facts (here, or on a device over SSH)."""
        features = facts.get("cpu_features")
        return cls(str(facts.get("machine", "")), str(facts.get("cpu", "")),
                   tuple(sorted(features)) if isinstance(features, list) else None,
                   facts.get("cpu_count") if isinstance(facts.get("cpu_count"), int) else None,
                   str(facts.get("ort_version", "")), source)

    def key(self) -> str:
        """A short name for this machine's facts (not their source): what calibrated profiles are cached by."""
        facts = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = [self.cpu or self.machine or "unknown CPU"]
        if self.features is not None:
            parts.append("+".join(self.features) or "no kernel features")
        if self.cores:
            parts.append(f"{self.cores} cores")
        if self.onnxruntime:
            parts.append(f"onnxruntime {self.onnxruntime}")
        return ", ".join(parts)


@functools.cache
def local() -> Fingerprint:
    """This machine and its onnxruntime (read once per process)."""
    return Fingerprint(platform.machine(), cpu_model(), tuple(cpu_features()), os.cpu_count(), ort.__version__,
                       "read on this machine")


def differences(fitted: Fingerprint | None, here: Fingerprint) -> list[str]:
    """How ``here`` differs from the machine ``fitted`` describes, one phrase each (empty: it matches).
    A profile without a fingerprint gives one phrase saying so: nothing says where it was fitted."""
    if fitted is None:
        return ["the profile does not record the machine it was fitted on"]
    out = []
    if fitted.machine and here.machine and fitted.machine != here.machine:
        out.append(f"architecture {here.machine}, not {fitted.machine}")
    if fitted.cpu and here.cpu and fitted.cpu != here.cpu:
        out.append(f"CPU {here.cpu!r}, not {fitted.cpu!r}")
    if fitted.features is not None and here.features is not None:
        lacks = sorted(set(fitted.features) - set(here.features))
        extra = sorted(set(here.features) - set(fitted.features))
        if lacks:
            out.append(f"lacks {', '.join(lacks)}")
        if extra:
            out.append(f"also has {', '.join(extra)}")
    if fitted.cores and here.cores and fitted.cores != here.cores:
        out.append(f"{here.cores} cores, not {fitted.cores}")
    if fitted.onnxruntime and here.onnxruntime and fitted.onnxruntime != here.onnxruntime:
        out.append(f"onnxruntime {here.onnxruntime}, not {fitted.onnxruntime}")
    return out


def mismatch_note(profile_name: str, diffs: list[str]) -> str:
    """The one line every prediction and report carries when ``diffs`` is not empty."""
    return (f"profile '{profile_name}' was fitted on another machine ({'; '.join(diffs)}): its figures may not "
            f"hold here; fit this machine with 'edgeprune calibrate --device {profile_name} --quick'"
            + (" (then --device host uses it)" if profile_name == "host" else ""))

