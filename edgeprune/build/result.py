"""What a build found, as dataclasses; ``to_dict()`` gives the JSON summary and manifest sections.

The CLI table, ``report.md`` and the plot read attributes of these; the JSON output
(``edgeprune build --json``) and the manifest's ``latency`` section keep the keys they
have always had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.benchmarks.compare import Comparison
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.benchmarks.targets import LatencyFigure
from edgeprune.build.fitting import Attempt
from edgeprune.pipeline.blocks import Block
from edgeprune.pipeline.finetune import FinetuneConfig
from edgeprune.pipeline.plan import Plan, SearchResult
from edgeprune.pipeline.select import Candidate
from edgeprune.files import sha256_json


def plan_key(removed: list[str]) -> str:
    """The short name of a block set (cache files, ``selection.chosen``)."""
    return sha256_json([sorted(removed)], 12)


@dataclass
class Selection:
    mode: str                       # recovered | scored | single
    candidates: list[Candidate]
    chosen: Candidate

    @property
    def label(self) -> str:
        return "+".join(self.chosen.proposed_by)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "candidates": [c.to_dict() for c in self.candidates],
                "chosen": plan_key(self.chosen.removed)}


@dataclass
class AccuracySection:
    images: int                     # held-out images behind the figures below
    scoring_images: int
    shared: bool                    # the split was too small: the held-out images also scored
    before: float
    after_removal: float
    after_finetune: float | None
    split: str = ""                 # how the scoring and held-out images were drawn (per class, seeded)
    onnx_fp32: float | None = None  # onnxruntime's top-1 of the float file, on the same held-out images
    onnx_int8: float | None = None  # ... and of the int8 file, when the build quantized
    precision: str = "fp32"         # of the shipped model.onnx: fp32, int8 or mixed

    @property
    def final(self) -> float:
        """Top-1 of the chosen model in torch after fine-tune (what the accuracy guard judges)."""
        return self.after_finetune if self.after_finetune is not None else self.after_removal

    @property
    def shipped(self) -> float:
        """Top-1 of the file the user receives, as onnxruntime computes it (torch's figure until it is measured)."""
        measured = self.onnx_fp32 if self.precision == "fp32" else self.onnx_int8
        return measured if measured is not None else self.final

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shipped": self.shipped}



@dataclass
class LatencySection:
    budget_ms: float
    metric: str
    device: str
    device_after: LatencyFigure
    device_before: LatencyFigure
    host: Comparison                # after (a) and before (b), interleaved
    host_predicted: Any             # the host predictor's Prediction of the final model

    @property
    def within_budget(self) -> bool:
        return self.device_after.value_ms <= self.budget_ms

    @property
    def chance(self) -> float:
        """The chance that the device meets the budget with the final model (its figure's band or runs)."""
        return self.device_after.chance_within(self.budget_ms)

    def verdict(self) -> str:
        """``14.82 ms (predicted:rpi4) <= 15 ms, 53% chance of <= 15 ms on rpi4``."""
        f, b = self.device_after, self.budget_ms
        met = f", the figure met with {f.confidence:.0%} chance" if f.confidence is not None else ""
        return (f"{f.value_ms:.2f} ms ({f.source}{met}) <= {b:g} ms, {self.chance:.0%} chance of <= {b:g} ms "
                f"on {self.device}")

    @property
    def host_after(self) -> LatencyResult:
        return self.host.a

    @property
    def host_before(self) -> LatencyResult:
        return self.host.b

    def to_dict(self) -> dict[str, Any]:
        h, p = self.host, self.host_predicted
        return {
            "budget_ms": self.budget_ms, "metric": self.metric, "device": self.device,
            "within_budget": self.within_budget, "chance_within_budget": self.chance,
            "confidence": self.device_after.confidence,
            "device_after": self.device_after.to_dict(), "device_before": self.device_before.to_dict(),
            "host_after": h.a.to_dict(), "host_before": h.b.to_dict(),
            "host_ratio": {"after_over_before": h.ratio, "ci": [h.ci_low, h.ci_high], "confidence": h.confidence,
                           "rounds": h.rounds, "after_ms": h.a_ms, "before_ms": h.b_ms,
                           "statistic": f"median over rounds of each round's {100 * h.round_quantile:g}th percentile"},
            "host_predicted_after_ms": p.latency_ms, "host_predicted_band": [p.low_ms, p.high_ms],
            "host_profile_fitted_elsewhere": list(p.fitted_elsewhere),
        }


@dataclass
class BuildResult:
    """A build that met its budget."""

    device: str
    search: SearchResult
    attempts: list[Attempt]
    selection: Selection
    accuracy: AccuracySection
    latency: LatencySection
    blocks: list[Block]
    params_before: int
    params_after: int
    static_memory: dict[str, Any] | None
    finetune: FinetuneConfig | None
    search_evaluations: int         # accuracies measured in this run (0 when all came from the cache)
    wall_s: float = 0.0             # over every run this build took (an interrupted run's time included)
    wall_runs_s: list[float] = field(default_factory=list)
    verify_arm: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None      # the int8 lever: whether it paid, and the mixed precision found
    torch: dict[str, Any] | None = None     # where the torch work ran and in what precision (Inputs.torch_record)
    anchor: dict[str, Any] | None = None    # the original measured on the target against its prediction (stages.anchor)
    search_cost: dict[str, Any] | None = None   # plans measured and images run through (Fit.search_record)
    stage_s: dict[str, float] | None = None     # wall time of the search and of the fine-tunes in this run

    @property
    def removed(self) -> list[str]:
        return self.selection.chosen.removed

    @property
    def strategy(self) -> str:
        return self.selection.label

    def to_dict(self) -> dict[str, Any]:
        d = {
            "device": self.device, "budget_ms": self.latency.budget_ms, "metric": self.latency.metric,
            "within_budget": self.latency.within_budget, "removed": self.removed, "strategy": self.strategy,
            "search": self.search.to_dict(), "attempts": [a.to_dict() for a in self.attempts],
            "selection": self.selection.to_dict(), "accuracy": self.accuracy.to_dict(),
            "latency": self.latency.to_dict(), "blocks": [b.to_dict() for b in self.blocks],
            "params": {"before": self.params_before, "after": self.params_after},
            "static_memory": self.static_memory,
            "finetune": self.finetune.to_dict() if self.finetune else None,
            "edgeprune": __version__, "search_evaluations": self.search_evaluations, "wall_s": self.wall_s,
            "wall_runs_s": self.wall_runs_s,
        }
        if self.search_cost is not None:
            d["search_cost"] = self.search_cost
        if self.stage_s is not None:
            d["stage_s"] = self.stage_s
        if self.verify_arm is not None:
            d["verify_arm"] = self.verify_arm
        if self.int8 is not None:
            d["int8"] = self.int8
        if self.torch is not None:
            d["torch"] = self.torch
        if self.anchor is not None:
            d["anchor"] = self.anchor
        return d


@dataclass
class Unreachable:
    """A budget no plan meets: the search's floor (everything removed), or the short lists of
    every attempt when the plans' own graphs never came in under the budget."""

    device: str
    budget_ms: float
    search: SearchResult
    attempts: list[Attempt] = field(default_factory=list)
    search_evaluations: int = 0
    selection: Selection | None = None          # the accuracy guard: the plan that fits but loses too much
    accuracy: AccuracySection | None = None
    reach: dict[str, float] = field(default_factory=dict)   # lever combination -> its fastest plan (ms predicted)
    int8: dict[str, Any] | None = None          # the int8 lever, when mixed precision met no --max-int8-drop
    torch: dict[str, Any] | None = None         # where the scoring ran and in what precision
    anchor: dict[str, Any] | None = None        # the original measured on the target against its prediction
    search_cost: dict[str, Any] | None = None   # plans measured and images run through (Fit.search_record)

    @property
    def floor(self) -> Plan | None:
        return self.search.floor

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"budget_ms": self.budget_ms, "device": self.device, "search": self.search.to_dict(),
                             "search_evaluations": self.search_evaluations,
                             "attempts": [a.to_dict() for a in self.attempts]}
        if self.search_cost is not None:
            d["search_cost"] = self.search_cost
        if self.floor is not None:
            d.update(best_reachable_ms=self.floor.latency_ms, best_reachable_top1=self.floor.top1)
        if self.reach:
            d["lever_reach_ms"] = self.reach
        if self.selection is not None:
            d.update(selection=self.selection.to_dict(), removed=self.selection.chosen.removed)
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy.to_dict()
        if self.int8 is not None:
            d["int8"] = self.int8
        if self.torch is not None:
            d["torch"] = self.torch
        if self.anchor is not None:
            d["anchor"] = self.anchor
        return d


@dataclass
class BuildOutcome:
    exit_code: int
    message: str
    result: BuildResult | Unreachable | None       # None: a torchrun rank other than 0, which ships nothing
    artifact: Path | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.to_dict() if self.result is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "message": self.message,
                "artifact": str(self.artifact) if self.artifact else None, **self.summary}
