"""Where a device's latency figure comes from, decided once: measured over SSH, here, or predicted.

:func:`resolve_target` is the one place that answers it, from ``--device`` and ``--ssh``:

1. ``--ssh`` if given, else the profile's ``ssh`` line: measured on that device over SSH
   (:class:`RemoteTarget`, wrapping :mod:`edgeprune.devices.ssh`);
2. otherwise, for the ``host`` profile (or no profile), measured here
   (:class:`~edgeprune.benchmarks.targets.HostTarget`);
3. otherwise predicted from the profile's latency model (:class:`PredictedTarget`), or,
   with ``otherwise="host"`` (commands that always measure: bench, check, calibrate),
   measured here with the profile's threads and providers.

``--remote-python``/``--ssh-config`` without a device to reach, a malformed address or a
missing ssh config file are refused here, as :func:`edgeprune.devices.ssh.resolve_ssh` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, overload

import onnx

from edgeprune.benchmarks.latency import BenchConfig, resolve_config
from edgeprune.benchmarks.memory import MEMORY_TIMEOUT_S, MemoryResult
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.benchmarks.targets import (HostTarget, LatencyFigure, MeasuringTarget, Model, Target,
                                          check_metric)
from edgeprune.devices.predictor import Prediction, as_profile, predict
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.devices.ssh import SshConfig, bench_over_ssh, resolve_ssh, time_models_over_ssh

__all__ = ["HostTarget", "LatencyFigure", "MeasuringTarget", "PredictedTarget", "RemoteTarget", "Target",
           "bench_config", "figure_from_prediction", "profile_settings", "resolve_target"]


def profile_settings(profile: DeviceProfile) -> BenchConfig:
    """The settings a device figure is measured with: the profile's threads and providers."""
    return BenchConfig(threads=profile.threads, providers=list(profile.providers), device=profile.name)


def bench_config(base: BenchConfig, device: str | DeviceProfile | None = None, *,
                 threads: int | None = None, providers: list[str] | None = None) -> BenchConfig:
    """``base`` with ``--device``'s threads and providers applied, then the flags (flags win)."""
    return resolve_config(base, profile=as_profile(device) if device else None,
                          threads=threads, providers=providers)


@dataclass
class RemoteTarget:
    """Measured on a device over SSH: the model and ``ort_runner.py`` are copied there and run.

    ``device`` is the profile's name, when there is one; figures are labelled
    ``measured:ssh:<device>`` (without a profile, the settings' device or the address).
    """

    ssh: SshConfig
    device: str | None = None
    settings: BenchConfig | None = None     # threads/providers for figure()
    measures: bool = True
    remote: bool = True

    @property
    def name(self) -> str:
        return self.device or self.address

    @property
    def address(self) -> str:
        return str(self.ssh.target)

    @property
    def where(self) -> str:
        return f"over SSH on {self.address}"

    @property
    def python(self) -> str:
        return self.ssh.python

    @property
    def source(self) -> str:
        return f"measured:ssh:{self.name}"

    def bench(self, model: Model, cfg: BenchConfig, memory_repeats: int = 0
              ) -> tuple[LatencyResult, MemoryResult | None]:
        """Latency and (``memory_repeats`` > 0) memory in one session on the device."""
        return bench_over_ssh(model, self.ssh, cfg, self.device, memory_repeats=memory_repeats)

    def latency(self, model: Model, cfg: BenchConfig) -> LatencyResult:
        return self.bench(model, cfg)[0]

    def memory(self, model: Model, cfg: BenchConfig, repeats: int = 3) -> MemoryResult | None:
        """Memory on the device (the runner times the model too: :meth:`bench` gives both)."""
        return self.bench(model, cfg, memory_repeats=repeats)[1]

    def figure(self, model: Model, metric: str = "p50", runs: int = 100,
               confidence: float | None = None) -> LatencyFigure:
        check_metric(metric)
        base = self.settings or BenchConfig(device=self.device)
        return LatencyFigure.from_result(self.latency(model, replace(base, runs=runs)), metric, confidence)

    def time_models(self, models: Sequence[Path], threads: int, providers: Sequence[str],
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Raw runner timings of several models in one session (calibration)."""
        return time_models_over_ssh(models, self.ssh, threads, providers, progress=progress)


def figure_from_prediction(p: Prediction, metric: str = "p50", confidence: float | None = None) -> LatencyFigure:
    """A prediction as the figure judged for ``metric`` (p90: the band's upper edge), or met with chance
    ``confidence``."""
    return LatencyFigure.from_band(p.latency_ms, p.low_ms, p.high_ms, p.expected_error, p.source, metric,
                                   confidence)


@dataclass
class PredictedTarget:
    """Predicted from the device profile's latency model, with its expected-error band."""

    profile: DeviceProfile
    measures: bool = False
    remote: bool = False

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def source(self) -> str:
        return f"predicted:{self.profile.name}"

    def prediction(self, model: Model | onnx.ModelProto,
                   input_shapes: dict[str, Sequence[int]] | None = None) -> Prediction:
        return predict(model, self.profile, input_shapes)

    def figure(self, model: Model, metric: str = "p50", runs: int = 100,
               confidence: float | None = None) -> LatencyFigure:
        """``runs`` is ignored: nothing is run."""
        check_metric(metric)
        return figure_from_prediction(self.prediction(model), metric, confidence)


@overload
def resolve_target(device: str | DeviceProfile | None = ..., ssh: str | None = ..., *,
                   remote_python: str | None = ..., ssh_config: str | os.PathLike[str] | None = ...,
                   settings: BenchConfig | None = ..., otherwise: Literal["host"], ssh_timeout_s: float | None = ...,
                   memory_timeout_s: float | None = ...) -> MeasuringTarget: ...


@overload
def resolve_target(device: str | DeviceProfile | None = ..., ssh: str | None = ..., *,
                   remote_python: str | None = ..., ssh_config: str | os.PathLike[str] | None = ...,
                   settings: BenchConfig | None = ..., otherwise: Literal["predict"] = ..., ssh_timeout_s: float | None = ...,
                   memory_timeout_s: float | None = ...) -> Target: ...


def resolve_target(device: str | DeviceProfile | None = None, ssh: str | None = None, *,
                   remote_python: str | None = None, ssh_config: str | os.PathLike[str] | None = None,
                   settings: BenchConfig | None = None, otherwise: str = "predict",
                   ssh_timeout_s: float | None = None, memory_timeout_s: float | None = None) -> Target:
    """Where ``device``'s figures come from (see the module docstring).

    ``device`` is a profile name, TOML path or loaded profile (None: no profile, this host).
    ``settings`` are the threads and providers a target's :meth:`figure` measures with
    (default: the profile's). ``otherwise`` is what happens when no SSH target is named and
    the profile is not ``host``: ``"predict"`` (the build's budget figure) or ``"host"``
    (measure here anyway).
    """
    if otherwise not in ("predict", "host"):
        raise ValueError(f"otherwise must be 'predict' or 'host', got {otherwise!r}")
    profile = as_profile(device) if device else None
    ssh_cfg = resolve_ssh(ssh, profile, remote_python=remote_python, ssh_config=ssh_config, timeout_s=ssh_timeout_s)
    if settings is None and profile is not None:
        settings = profile_settings(profile)
    if ssh_cfg is not None:
        return RemoteTarget(ssh_cfg, profile.name if profile is not None else None, settings)
    if otherwise == "host" or profile is None or profile.name == "host":
        return HostTarget(settings, memory_timeout_s=MEMORY_TIMEOUT_S if memory_timeout_s is None
                          else memory_timeout_s)
    return PredictedTarget(profile)
