"""The build's core decision: search, judge each short-listed plan on its own graph, re-search if none fits.

The search plans with a latency model of "the model minus these blocks" (fast, one export);
the budget is judged on each short-listed plan's own exported graph, predicted or measured
(``figure``), which can come out above the plan's estimate. When no plan on the short list
fits, the search runs again against an internal budget tightened by the worst overshoot,
at most ``attempts`` times. The function only sees callables, so it is tested on a fake
search and fake latencies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from edgeprune.pipeline.plan import SearchResult
from edgeprune.pipeline.select import Candidate

SEARCH_ATTEMPTS = 4        # searches in all, the first at the real budget
TIGHTEN_MARGIN = 0.99      # aim 1% below the budget after an overshoot


@dataclass
class Attempt:
    attempt: int
    removed: list[str]
    planned_ms: float          # the search's latency model
    final_ms: float            # the plan's own graph
    source: str                # where final_ms comes from

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitOutcome:
    search: SearchResult                              # the last search that ran
    shortlist: list[Candidate]                        # judged on their own graphs (final_ms set)
    fitting: list[Candidate]                          # those whose final figure meets the budget
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        return self.search.reachable

    @property
    def closest_ms(self) -> float | None:
        return min((c.final_ms for c in self.shortlist if c.final_ms is not None), default=None)


def search_until_fits(search_at: Callable[[float], tuple[SearchResult, list[Candidate]]],
                      figure: Callable[[Candidate], tuple[float, str]], budget_ms: float,
                      attempts: int = SEARCH_ATTEMPTS, on_retry: Callable[[float], None] = lambda _ms: None,
                      start_ms: float | None = None) -> FitOutcome:
    """``search_at(internal budget) -> (search result, short list)``; ``figure(candidate) ->
    (final ms, source)``. Stops at the first short list with a plan that fits, when the
    search says the budget is unreachable, or after ``attempts`` searches. ``start_ms``: the
    first internal budget, when the plans' final figures are of another form than the search's
    latency model (int8: the float plan aims at the budget divided by int8's ratio)."""
    internal = start_ms if start_ms is not None else budget_ms
    tried: list[Attempt] = []
    outcome = None
    for attempt in range(attempts):
        result, short = search_at(internal)
        if not result.reachable:
            return FitOutcome(result, [], [], tried)
        for c in short:
            c.final_ms, source = figure(c)
            tried.append(Attempt(attempt, list(c.removed), c.latency_ms, c.final_ms, source))
        outcome = FitOutcome(result, short, [c for c in short if c.final_ms <= budget_ms], tried)
        if outcome.fitting:
            return outcome
        closest = outcome.closest_ms
        on_retry(closest)
        internal *= budget_ms / closest * TIGHTEN_MARGIN
    assert outcome is not None
    return outcome
