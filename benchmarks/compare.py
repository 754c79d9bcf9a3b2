"""Side-by-side latency ratio of two models, measured together, with a confidence interval.

Absolute times drift on shared machines (another job starts, the CPU clocks down), so
two models timed minutes apart cannot be compared to a few percent. Timed together, in
short alternating blocks, both see the same drift and their *ratio* holds. The design:

* Both sessions are opened, warmed up, and timed in **rounds**. Each round times
  A, B, B, A (the next round B, A, A, B) in half-blocks of equal run count, so a linear
  drift within a round hits both models equally and neither always goes first.
* The half-block size is calibrated from the fastest calibration runs so that a round
  lasts about ``round_ms`` of the models' own time: long enough to average over scheduler
  noise, short enough to drift little.
* Each round yields one ratio: the lower quartile (``round_quantile``) of A's runs in that
  round over B's. Pre-emption by other jobs only ever *adds* time, so a low quantile
  tracks the model's own cost while up to three quarters of a round's runs are
  interrupted; the median breaks down at half, which a loaded 2-core box reaches (at a
  load average of ~7 we saw 30-45% of 1.8 ms runs pre-empted, and whole rounds worse).
* The estimate is the **median of the per-round ratios**; its confidence interval is a
  percentile bootstrap over rounds (rounds are the independent units, runs are not).
* With a decision ``threshold`` (the gate's 1 + tolerance), measuring is **sequential**:
  after ``rounds`` rounds, while the interval still straddles the threshold, more rounds
  are added (``step`` at a time) up to ``max_rounds``. Clear cases stop early; borderline
  cases get more data. The verdict then takes the point estimate.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.latency import BenchConfig, to_result
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError


@dataclass
class CompareConfig:
    rounds: int = 20               # rounds before the first look at the interval
    max_rounds: int = 80           # hard cap when the interval straddles the threshold
    step: int = 10                 # rounds added per extension
    round_ms: float = 200.0        # target duration of one round (both models)
    min_half_block: int = 3        # runs per half-block, at least ...
    max_half_block: int = 200      # ... and at most
    round_quantile: float = 0.25   # per-model statistic within a round (0.5 = median)
    confidence: float = 0.95
    bootstrap: int = 4000
    seed: int = 0
    threshold: float | None = None  # decision ratio; enables sequential extension

    def validate(self) -> None:
        if self.rounds < 3:
            raise EdgepruneError(f"--rounds must be at least 3, got {self.rounds}")
        if self.max_rounds < self.rounds:
            raise EdgepruneError(f"--max-rounds ({self.max_rounds}) is below --rounds ({self.rounds})")
        if not 0.5 < self.confidence < 1:
            raise EdgepruneError(f"confidence must be between 0.5 and 1, got {self.confidence}")
        if not 0 <= self.round_quantile <= 1:
            raise EdgepruneError(f"round quantile must be within 0..1, got {self.round_quantile}")
        if self.step < 1 or self.round_ms <= 0 or self.min_half_block < 1:
            raise EdgepruneError("step, round duration and block size must be positive")


@dataclass
class Comparison:
    """``ratio`` is A's latency divided by B's: above 1 means A is slower."""

    a: LatencyResult
    b: LatencyResult
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    rounds: int
    half_block: int
    round_ratios: list[float] = field(default_factory=list)
    threshold: float | None = None
    extended: bool = False          # more rounds than the minimum were needed
    round_quantile: float = 0.25    # the per-round statistic of each model that the ratios divide
    a_round_ms: list[float] = field(default_factory=list)
    b_round_ms: list[float] = field(default_factory=list)

    @property
    def a_ms(self) -> float:
        """A's per-round statistic, median over the rounds: the figure ``ratio`` compares."""
        return float(np.median(self.a_round_ms))

    @property
    def b_ms(self) -> float:
        return float(np.median(self.b_round_ms))

    @property
    def conclusive(self) -> bool:
        """The interval lies wholly on one side of the threshold (if there is one)."""
        return self.threshold is None or not (self.ci_low <= self.threshold <= self.ci_high)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["a"] = self.a.to_dict(samples)
        d["b"] = self.b.to_dict(samples)
        d["conclusive"] = self.conclusive
        return d


def bootstrap_median_ci(values: np.ndarray, confidence: float, n_boot: int,
                        rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``."""
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    meds = np.median(values[idx], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(meds, [alpha, 1 - alpha])
    return float(lo), float(hi)


class _Side:
    """One model's session, inputs and the samples it has collected."""

    def __init__(self, model: str, cfg: BenchConfig) -> None:
        try:
            self.session, self.facts = ort_runner.open_session(ort_runner.SessionSpec(
                model, cfg.threads, list(cfg.providers)))
            self.feeds = ort_runner.make_feeds(self.session, cfg.shapes, cfg.seed)
        except ort_runner.RunnerError as e:
            raise EdgepruneError(str(e)) from None
        self.model = model
        self.samples: list[float] = []
        self.raw_facts = {**ort_runner.model_facts(model), **self.facts}

    def block(self, n: int) -> list[float]:
        out = [ort_runner.run_once_ms(self.session, self.feeds) for _ in range(n)]
        self.samples.extend(out)
        return out

    def result(self, cfg: BenchConfig) -> LatencyResult:
        raw = {**self.raw_facts, **ort_runner.host_facts(), "samples_ms": self.samples,
               "warmup": cfg.warmup, "threads": cfg.threads,
               "inputs": ort_runner.describe_feeds(self.feeds)}
        res = to_result(raw)
        res.extra["interleaved"] = True
        return res


def compare(model_a: str | os.PathLike[str], model_b: str | os.PathLike[str],
            bench: BenchConfig, cfg: CompareConfig | None = None) -> Comparison:
    """Time A and B interleaved; return A/B with a bootstrap confidence interval."""
    cfg = cfg or CompareConfig()
    cfg.validate()
    bench.validate()
    a, b = _Side(str(model_a), bench), _Side(str(model_b), bench)
    for side in (a, b):
        ort_runner.warm(side.session, side.feeds, max(bench.warmup, 1))
    # Calibrate: a few runs each, alternated, to size the half-blocks from the models'
    # own cost (the fastest runs; slow ones were interrupted).
    probe = {id(s): [ort_runner.run_once_ms(s.session, s.feeds) for _ in range(5)] for s in (a, b)}
    per_pair_ms = sum(min(v) for v in probe.values())
    half = math.ceil(cfg.round_ms / 2 / max(per_pair_ms, 1e-6))
    half = min(max(half, cfg.min_half_block), cfg.max_half_block)

    rng = np.random.default_rng(cfg.seed)
    ratios: list[float] = []
    per_round: dict[int, list[float]] = {id(a): [], id(b): []}

    def run_rounds(n: int) -> None:
        for _ in range(n):
            first, second = (a, b) if len(ratios) % 2 == 0 else (b, a)
            got: dict[int, list[float]] = {id(a): [], id(b): []}
            for side in (first, second, second, first):
                got[id(side)] += side.block(half)
            for side in (a, b):
                per_round[id(side)].append(float(np.quantile(got[id(side)], cfg.round_quantile)))
            ratios.append(per_round[id(a)][-1] / per_round[id(b)][-1])

    run_rounds(cfg.rounds)
    extended = False
    while True:
        r = np.asarray(ratios)
        lo, hi = bootstrap_median_ci(r, cfg.confidence, cfg.bootstrap, rng)
        straddles = cfg.threshold is not None and lo <= cfg.threshold <= hi
        if not straddles or len(ratios) >= cfg.max_rounds:
            break
        run_rounds(min(cfg.step, cfg.max_rounds - len(ratios)))
        extended = True
    return Comparison(a=a.result(bench), b=b.result(bench), ratio=float(np.median(r)),
                      ci_low=lo, ci_high=hi, confidence=cfg.confidence, rounds=len(ratios),
                      half_block=half, round_ratios=ratios, threshold=cfg.threshold,
                      extended=extended, round_quantile=cfg.round_quantile, a_round_ms=per_round[id(a)],
                      b_round_ms=per_round[id(b)])
