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

Every value read from a file is checked against its field's annotation before any section is
made (:func:`check_file_value`: a bool must be a TOML boolean, an int an integer, a float a
number; ``str | None``, ``list[str]``, ``tuple[float, ...]``) and against :data:`RANGES`, so
``trust_checkpoint = "false"`` or ``shortlist = "4"`` is a one-line error naming the key and
the file. ``model.trust_code`` (consent to run a ``module:factory``) is never read from a file:
only ``--trust-code`` sets it, or a factory typed as ``--model`` on the command line.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from edgeprune.benchmarks.targets import METRICS, check_confidence
from edgeprune.benchmarks.units import parse_duration_ms
from edgeprune.errors import EdgepruneError
from edgeprune.devices.ssh import SSH_TIMEOUT_S
from edgeprune.exporters.quantize import QuantizeConfig
from edgeprune.files import read_toml
from edgeprune.pipeline.autocast import check_autocast
from edgeprune.pipeline.data import DataSpec
from edgeprune.pipeline.evaluate import EVAL_BATCH_SIZE
from edgeprune.pipeline.finetune import FinetuneConfig
from edgeprune.pipeline.channels import CHANNEL_CRITERIA, CHANNEL_MULTIPLE
from edgeprune.pipeline.importance import CRITERIA
from edgeprune.pipeline.levers import DEFAULT_LEVERS, parse_levers
from edgeprune.pipeline.models import ModelSpec, is_factory
from edgeprune.pipeline.plan import STRATEGIES
from edgeprune.pipeline.table_search import JOINT_STRATEGIES


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


def validate_channel_options(criterion: str, multiple: int) -> None:
    """The channel lever's options: a known per-channel criterion, a multiple of 4."""
    _one_of(criterion, tuple(CHANNEL_CRITERIA), "--channel-criterion")
    if multiple < 4 or multiple % 4:
        raise EdgepruneError(f"--channel-multiple must be a multiple of 4 (4, 8, 16, ...), got {multiple}: "
                             "off a multiple of 4 onnxruntime's CPU convolutions leave their NCHWc kernels, which "
                             "the latency predictor does not model (1.2-4.4x slower than predicted on the host: "
                             "docs/predictor-shapes.md)")


@dataclass
class SearchConfig:
    """What plan to look for: the budget, how plans are searched and which one ships."""

    budget: str = "30ms"
    metric: str = "p50"
    confidence: float | None = None       # judge predictions on the figure the device meets with this chance
    score_images: int = 500               # validation images that score plans; the rest measure the result
    batch_size: int = EVAL_BATCH_SIZE     # images per forward pass when scoring and evaluating (memory bound)
    max_accuracy_drop: float = 5.0        # points of held-out top-1 the shipped plan may lose after fine-tune
    max_int8_drop: float = 1.0            # points of scoring top-1 int8 may cost against the float file (int8 lever)
    strategies: list[str] = field(default_factory=lambda: [*STRATEGIES, "table"])   # block ones, then joint ones
    search_minutes: float = 20.0          # the joint search returns the best measured plan that fits by then
    proxies: list[str] = field(default_factory=lambda: ["norm-ratio", "bn-gamma"])
    select: str = "recovered"
    shortlist: int = 4                    # distinct plans fine-tuned when select = recovered
    replace_projection: bool = False
    levers: list[str] = field(default_factory=lambda: list(DEFAULT_LEVERS))
    channel_criterion: str = "magnitude"  # which channels of a group go first (the moves themselves are measured)
    channel_multiple: int = CHANNEL_MULTIPLE   # kept channel counts are multiples of this
    min_resolution: int | None = None     # the resolution lever's floor (default: half the model's input size)
    resolution_step: int = 8              # pixels between candidate input sizes

    def __post_init__(self) -> None:
        self.budget_ms = parse_duration_ms(self.budget)
        self.levers = parse_levers(self.levers)
        validate_channel_options(self.channel_criterion, self.channel_multiple)
        _one_of(self.metric, METRICS, "--metric")
        check_confidence(self.confidence)
        if self.confidence is not None and self.metric != "p50":
            raise EdgepruneError("--confidence and --metric p90 both say which figure meets the budget; give one")
        _all_of(self.strategies, (*STRATEGIES, *JOINT_STRATEGIES), "strategies")
        if not self.search_minutes > 0:       # NaN too: every comparison with it is false
            raise EdgepruneError(f"--search-minutes must be above 0, got {self.search_minutes}")
        bad = [p for p in self.proxies if p not in PROXIES]
        if bad:
            raise EdgepruneError(f"unknown proxies {bad}; use any of {', '.join(PROXIES)}")
        _one_of(self.select, SELECTIONS, "--select")      # numeric ranges: RANGES, checked by BuildConfig

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
    ssh_timeout: float = SSH_TIMEOUT_S     # longest one command on the device may run
    bench_runs: int = 100                  # timed runs of a measured device/host figure
    bench_rounds: int = 10                 # interleaved before/after rounds on the host
    verify_arm: bool = False               # last step: run the artifact on aarch64 onnxruntime under qemu
    calibrate: bool = True                 # --device host on a machine the bundled profile was not fitted on
    anchor: bool = True                    # a measuring target: read predictions at the original's measured/predicted


@dataclass
class BuildConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)   # the int8 lever
    out: str = "edgeprune-build"
    accelerator: str = "cpu"
    autocast: str = "auto"         # mixed precision of the torch work: auto | off | bf16 | fp16 (pipeline/autocast.py)
    seed: int = 0

    def __post_init__(self) -> None:
        check_autocast(self.autocast, self.accelerator)
        flag_of = {path: flag for flag, path in FLAGS.items()}
        for path in RANGES:          # however the value came (flag, file, code): one line naming the setting
            *sections, name = path.split(".")
            obj = self
            for section in sections:
                obj = getattr(obj, section)
            check_range(path, getattr(obj, name), f"--{flag_of[path].replace('_', '-')}" if path in flag_of else path)
        self.finetune = replace(self.finetune, seed=self.seed, checkpoint=None)

    # ------------------------------------------------------------ flags and files

    @classmethod
    def from_flags(cls, values: dict[str, Any], base: "BuildConfig | None" = None,
                   typed: bool = True) -> "BuildConfig":
        """``base`` (default: the defaults) with the given flags (names as in :data:`FLAGS`) set.

        ``typed``: the values were given on the command line, so a ``module:factory`` given as
        ``model`` is consent to run it; values read from a file (``typed=False``) never are."""
        values = dict(values)
        trust_code = bool(values.pop("trust_code", False)) or bool(base and base.model.trust_code)
        model = values.get("model")
        if typed and isinstance(model, str) and is_factory(model):
            trust_code = True
        tree = (base or cls()).to_dict()
        for flag, value in values.items():
            section, name = _field_of(flag)
            target = tree[section] if section else tree
            target[name] = _flag_value(flag, value)
        cfg = cls.from_dict(tree)
        cfg.model.trust_code = trust_code
        return cfg

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
            for key, value in flat.items():
                check_file_value(FLAGS[key], value, f"{path}: build.{key}")
            return cls.from_flags(flags or {}, cls.from_flags(flat, typed=False))
        _check_tree(data, str(path))
        return cls.from_flags(flags or {}, cls.from_dict(data, str(path)))

    def to_dict(self) -> dict[str, Any]:
        """The settings a config file holds (not consent to run code, nor what the build sets itself)."""
        tree = asdict(self)
        for name in FINETUNE_SET_BY_BUILD:
            tree["finetune"].pop(name)
        tree["model"].pop("trust_code")
        return tree

    def flat(self) -> dict[str, Any]:
        """Flag name -> value: the manifest's ``build.config`` and the JSON summary."""
        tree = self.to_dict()
        tree["model"]["trust_code"] = self.model.trust_code
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
    "trust_code": "model.trust_code",
    "data": "data.path", "mean": "data.mean", "std": "data.std", "channels": "data.channels", "resize": "data.resize",
    "data_load": "data.load", "data_workers": "data.workers",
    "budget": "search.budget", "metric": "search.metric", "confidence": "search.confidence",
    "score_images": "search.score_images", "batch_size": "search.batch_size",
    "max_accuracy_drop": "search.max_accuracy_drop", "strategies": "search.strategies", "proxies": "search.proxies",
    "search_minutes": "search.search_minutes",
    "select": "search.select", "shortlist": "search.shortlist", "replace_projection": "search.replace_projection",
    "levers": "search.levers", "channel_criterion": "search.channel_criterion",
    "channel_multiple": "search.channel_multiple", "min_resolution": "search.min_resolution",
    "resolution_step": "search.resolution_step",
    "finetune_epochs": "finetune.epochs", "finetune_lr": "finetune.lr", "kd": "finetune.kd",
    "temperature": "finetune.temperature", "alpha": "finetune.alpha", "gradual": "finetune.gradual",
    "device": "measure.device", "ssh": "measure.ssh", "remote_python": "measure.remote_python",
    "ssh_config": "measure.ssh_config", "ssh_timeout": "measure.ssh_timeout", "bench_runs": "measure.bench_runs", "bench_rounds": "measure.bench_rounds",
    "verify_arm": "measure.verify_arm", "calibrate": "measure.calibrate", "anchor": "measure.anchor",
    "max_int8_drop": "search.max_int8_drop", "int8_calibration": "quantize.method",
    "calibration_images": "quantize.calibration_images",
    "out": "out", "accelerator": "accelerator", "autocast": "autocast", "seed": "seed",
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
    tree["model"]["trust_code"] = _DEFAULTS.model.trust_code
    value = tree[section][name] if section else tree[name]
    return list(value) if isinstance(value, (list, tuple)) else value


def _flag_value(flag: str, value: Any) -> Any:
    """A flag's value as the field holds it (a repeated flag's tuple becomes a list)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _set_by_build(section: str) -> set[str]:
    return set(FINETUNE_SET_BY_BUILD) if section == "finetune" else set()


# ---------------------------------------------------------------- values read from files

# field path -> (lowest, highest, whether the lowest itself is allowed); None: unbounded on that side
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "model.num_classes": (1, None, True), "model.in_channels": (1, None, True), "model.input_size": (1, None, True),
    "data.channels": (1, None, True), "data.workers": (0, None, True),
    "search.score_images": (1, None, True), "search.batch_size": (1, None, True), "search.shortlist": (1, None, True),
    "search.max_accuracy_drop": (0, 100, True), "search.max_int8_drop": (0, 100, True),
    "search.search_minutes": (0, None, False),
    "search.channel_multiple": (1, None, True),
    "search.min_resolution": (1, None, True), "search.resolution_step": (1, None, True),
    "finetune.epochs": (0, None, True), "finetune.steps": (1, None, True), "finetune.lr": (0, None, False),
    "finetune.weight_decay": (0, None, True), "finetune.momentum": (0, 1, True), "finetune.batch_size": (1, None, True),
    "finetune.temperature": (0, None, False), "finetune.alpha": (0, 1, True),
    "finetune.checkpoint_every_s": (0, None, False), "finetune.max_memory_mb": (0, None, False),
    "measure.bench_runs": (1, None, True), "measure.bench_rounds": (1, None, True),
    "measure.ssh_timeout": (0, None, False),
    "seed": (0, None, True),
}
NEVER_FROM_FILES = {"model.trust_code": "consent to run a module:factory is given on the command line only "
                                        "(--trust-code)"}


def _field_type(path: str) -> Any:
    """The annotation of the field at ``path`` (``search.budget``, ``seed``)."""
    cls: Any = BuildConfig
    *sections, name = path.split(".")
    for s in sections:
        cls = typing.get_type_hints(cls)[s]
    return typing.get_type_hints(cls)[name]


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return type(value) is bool
    if tp is int:
        return type(value) is int
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is tuple:
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if not isinstance(value, (list, tuple)):
            return False
        if item is not None:
            return all(_matches(v, item) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return isinstance(value, tp) if isinstance(tp, type) else False


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def check_file_value(path: str, value: Any, key: str) -> None:
    """Refuse a value read from a file that does not fit the field at ``path``: its type (from the
    dataclass annotation), then :data:`RANGES`. ``key`` names the key and the file in the message."""
    if path in NEVER_FROM_FILES:
        raise EdgepruneError(f"{key} is not read from files: {NEVER_FROM_FILES[path]}")
    tp = _field_type(path)
    if not _matches(value, tp):
        shown = f'"{value}"' if isinstance(value, str) else _toml_value(value) if value is not None else "nothing"
        raise EdgepruneError(f"{key} must be {_describe(tp)}, got {shown[:60]}")
    check_range(path, value, key)


def check_range(path: str, value: Any, key: str) -> None:
    """Refuse a number outside :data:`RANGES` for the field at ``path`` (from a file or a flag)."""
    if path in RANGES and type(value) in (int, float):
        low, high, inclusive = RANGES[path]
        if (low is not None and (value < low or (value == low and not inclusive))) or \
                (high is not None and value > high):
            bound = (f"between {low} and {high}" if high is not None else
                     f"at least {low}" if inclusive else f"above {low}")
            raise EdgepruneError(f"{key} must be {bound}, got {value}")


def _check_tree(tree: dict[str, Any], where: str) -> None:
    """Check every known key of a nested config read from ``where`` (unknown keys: ``from_dict`` names them)."""
    known = {f.name for f in fields(BuildConfig)}
    for name, value in tree.items():
        if name not in known:
            continue
        if isinstance(value, dict) and is_dataclass(typing.get_type_hints(BuildConfig)[name]):
            own = {f.name for f in fields(typing.get_type_hints(BuildConfig)[name])}
            for key, v in value.items():
                if key in own:
                    check_file_value(f"{name}.{key}", v, f"{where}: {name}.{key}")
        elif not is_dataclass(typing.get_type_hints(BuildConfig)[name]):
            check_file_value(name, value, f"{where}: {name}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


_DEFAULTS = BuildConfig()
