"""The build's configuration: nested dataclasses, the one source of every default.

Sections reuse the library's own configs where one exists (``ModelSpec``, ``DataSpec``,
``FinetuneConfig``) and add two of the build's own (``SearchConfig``, ``MeasureConfig``).
Each validates itself when it is made, against the registries that define what is valid
(strategies, proxy criteria, metrics, selection rules), so a bad TOML key or flag fails before
anything is loaded.

``FLAGS`` maps every ``edgeprune build`` flag onto the field it sets; the Typer command
takes its defaults from ``BuildConfig()`` through it, and ``build --config FILE`` reads
the TOML that ``to_toml`` writes (nested sections; the flat ``[build]`` table of
earlier versions is accepted too).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from edgeprune.benchmarks.targets import METRICS
from edgeprune.benchmarks.units import parse_duration_ms
from edgeprune.errors import EdgepruneError
from edgeprune.files import read_toml
from edgeprune.pipeline.data import DataSpec
from edgeprune.pipeline.evaluate import EVAL_BATCH_SIZE
from edgeprune.pipeline.finetune import FinetuneConfig
from edgeprune.pipeline.importance import CRITERIA
from edgeprune.pipeline.models import ModelSpec
from edgeprune.pipeline.plan import STRATEGIES


SELECTIONS = ("recovered", "scored")     # recovered: fine-tune each short-listed plan, ship the best after
PROXIES = tuple(c for c in CRITERIA if c != "direct")
FINETUNE_SET_BY_BUILD = ("seed", "checkpoint")   # the build's seed and its cache decide these


def _one_of(value: str, allowed: tuple[str, ...], flag: str) -> None:
    if value not in allowed:
        raise EdgepruneError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")


def _all_of(values: list[str], allowed: tuple[str, ...], flag: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise EdgepruneError(f"unknown {flag} {bad or values}; use {', '.join(allowed)}")


@dataclass
class SearchConfig:
    """What plan to look for: the budget, how plans are searched and which one ships."""

    budget: str = "30ms"
    metric: str = "p50"
    score_images: int = 500               # validation images that score plans; the rest measure the result
    batch_size: int = EVAL_BATCH_SIZE     # images per forward pass when scoring and evaluating (memory bound)
    max_accuracy_drop: float = 5.0        # points of held-out top-1 the shipped plan may lose after fine-tune
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    proxies: list[str] = field(default_factory=lambda: ["norm-ratio", "bn-gamma"])
    select: str = "recovered"
    shortlist: int = 4                    # distinct plans fine-tuned when select = recovered
    replace_projection: bool = False

    def __post_init__(self) -> None:
        self.budget_ms = parse_duration_ms(self.budget)
        _one_of(self.metric, METRICS, "--metric")
        _all_of(self.strategies, tuple(STRATEGIES), "strategies")
        bad = [p for p in self.proxies if p not in PROXIES]
        if bad:
            raise EdgepruneError(f"unknown proxies {bad}; use any of {', '.join(PROXIES)}")
        _one_of(self.select, SELECTIONS, "--select")
        if self.shortlist < 1:
            raise EdgepruneError(f"--shortlist must be at least 1, got {self.shortlist}")
        if self.score_images < 1:
            raise EdgepruneError("--score-images must be positive")
        if self.batch_size < 1:
            raise EdgepruneError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise EdgepruneError(f"--max-accuracy-drop is in points of top-1 (0-100), got {self.max_accuracy_drop}")

    @property
    def shortlist_size(self) -> int:
        return self.shortlist if self.select == "recovered" else 1


@dataclass
class MeasureConfig:
    """Where the budget is judged (predicted, or measured here or over SSH) and how long to time."""

    device: str = "rpi4"
    ssh: str | None = None
    remote_python: str | None = None       # python3 on the device (default: the profile's)
    ssh_config: str | None = None          # ssh config file (ssh -F)
    bench_runs: int = 100                  # timed runs of a measured device/host figure
    bench_rounds: int = 10                 # interleaved before/after rounds on the host
    verify_arm: bool = False               # last step: run the artifact on aarch64 onnxruntime under qemu

    def __post_init__(self) -> None:
        if self.bench_runs < 1 or self.bench_rounds < 1:
            raise EdgepruneError("--bench-runs and --bench-rounds must be at least 1")


@dataclass
class BuildConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    out: str = "edgeprune-build"
    accelerator: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.finetune.epochs < 0:
            raise EdgepruneError(f"--finetune-epochs must be 0 or more, got {self.finetune.epochs}")
        self.finetune = replace(self.finetune, seed=self.seed, checkpoint=None)

    # ------------------------------------------------------------ flags and files

    @classmethod
    def from_flags(cls, values: dict[str, Any], base: "BuildConfig | None" = None) -> "BuildConfig":
        """``base`` (default: the defaults) with the given flags (names as in :data:`FLAGS`) set."""
        tree = (base or cls()).to_dict()
        for flag, value in values.items():
            section, name = _field_of(flag)
            target = tree[section] if section else tree
            target[name] = _flag_value(flag, value)
        return cls.from_dict(tree)

    @classmethod
    def from_dict(cls, tree: dict[str, Any], where: str = "config") -> "BuildConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(tree) - set(known))
        if unknown:
            raise EdgepruneError(f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {}
        for name, value in tree.items():
            default = known[name].default_factory() if callable(known[name].default_factory) else None
            if is_dataclass(default):
                if not isinstance(value, dict):
                    raise EdgepruneError(f"{where}: [{name}] must be a table")
                allowed = {f.name for f in fields(default)} - _set_by_build(name)
                bad = sorted(set(value) - allowed)
                if bad:
                    raise EdgepruneError(f"{where}: unknown keys {', '.join(f'{name}.{b}' for b in bad)}; "
                                         f"known in [{name}]: {', '.join(sorted(allowed))}")
                kwargs[name] = replace(default, **value)
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise EdgepruneError(f"{where}: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path, flags: dict[str, Any] | None = None) -> "BuildConfig":
        """The file's settings (nested sections, or the flat ``[build]`` table of flag names),
        then ``flags`` on top."""
        data = read_toml(path, "config file")
        if "build" in data and isinstance(data["build"], dict):      # the flat form
            flat = {k.replace("-", "_"): v for k, v in data["build"].items()}
            unknown = sorted(k for k in flat if k not in FLAGS)
            if unknown:
                raise EdgepruneError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(FLAGS))}")
            return cls.from_flags({**flat, **(flags or {})})
        return cls.from_flags(flags or {}, cls.from_dict(data, str(path)))

    def to_dict(self) -> dict[str, Any]:
        tree = asdict(self)
        for name in FINETUNE_SET_BY_BUILD:
            tree["finetune"].pop(name)
        return tree

    def flat(self) -> dict[str, Any]:
        """Flag name -> value: the manifest's ``build.config`` and the JSON summary."""
        tree = self.to_dict()
        return {flag: (tree[s][n] if s else tree[n]) for flag, (s, n) in ((f, _field_of(f)) for f in FLAGS)}

    def to_toml(self) -> str:
        tree = self.to_dict()
        lines = ["# the resolved configuration of this build; `edgeprune build --config` accepts it"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict) and v is not None]
        for section, values in tree.items():
            if isinstance(values, dict):
                lines += ["", f"[{section}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        return "\n".join(lines) + "\n"


# flag (the Typer parameter name; --strategy and --proxy repeat into the plural) -> its field
FLAGS: dict[str, str] = {
    "model": "model.name", "weights": "model.weights", "num_classes": "model.num_classes",
    "in_channels": "model.in_channels", "input_size": "model.input_size", "trust_checkpoint": "model.trust_checkpoint",
    "data": "data.path", "mean": "data.mean", "std": "data.std", "channels": "data.channels", "resize": "data.resize",
    "budget": "search.budget", "metric": "search.metric",
    "score_images": "search.score_images", "batch_size": "search.batch_size",
    "max_accuracy_drop": "search.max_accuracy_drop", "strategies": "search.strategies", "proxies": "search.proxies",
    "select": "search.select", "shortlist": "search.shortlist", "replace_projection": "search.replace_projection",
    "finetune_epochs": "finetune.epochs", "finetune_lr": "finetune.lr", "kd": "finetune.kd",
    "temperature": "finetune.temperature", "alpha": "finetune.alpha",
    "device": "measure.device", "ssh": "measure.ssh", "remote_python": "measure.remote_python",
    "ssh_config": "measure.ssh_config", "bench_runs": "measure.bench_runs", "bench_rounds": "measure.bench_rounds",
    "verify_arm": "measure.verify_arm",
    "out": "out", "accelerator": "accelerator", "seed": "seed",
}


def _field_of(flag: str) -> tuple[str | None, str]:
    if flag not in FLAGS:
        raise EdgepruneError(f"unknown build setting {flag!r}")
    path = FLAGS[flag]
    return tuple(path.split(".")) if "." in path else (None, path)  # type: ignore[return-value]


def default_of(flag: str) -> Any:
    """The default of a flag, read from ``BuildConfig()``: what the Typer command shows and uses."""
    section, name = _field_of(flag)
    tree = _DEFAULTS.to_dict()
    value = tree[section][name] if section else tree[name]
    return list(value) if isinstance(value, (list, tuple)) else value


def _flag_value(flag: str, value: Any) -> Any:
    """A flag's value as the field holds it (a repeated flag's tuple becomes a list)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _set_by_build(section: str) -> set[str]:
    return set(FINETUNE_SET_BY_BUILD) if section == "finetune" else set()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


_DEFAULTS = BuildConfig()
