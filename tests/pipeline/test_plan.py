"""The plan search on a fake oracle (additive accuracy drops) and a fake latency model."""

from __future__ import annotations

import pytest

from edgeprune.pipeline.plan import STRATEGIES, pareto_front, search

DROP = {"a": 0.001, "b": 0.02, "c": 0.05, "d": 0.002, "e": 0.03}     # accuracy lost by removing each block
SAVES = {"a": 1.0, "b": 4.0, "c": 5.0, "d": 0.5, "e": 3.0}          # ms saved by removing each block
BASE_MS = 20.0


class FakeOracle:
    def __init__(self):
        self.calls = 0

    def __call__(self, removed):
        self.calls += 1
        top1 = 0.9 - sum(DROP[r] for r in removed)
        return top1, 1.0 - top1

    def extend(self, removed, candidates):
        return {c: self([*removed, c]) for c in candidates}


def latency(removed):
    return BASE_MS - sum(SAVES[r] for r in removed)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_returns_a_plan_that_fits(strategy):
    r = search(FakeOracle(), latency, list(DROP), 14.0, [strategy])
    plan = r.best[strategy]
    assert plan.strategy == strategy and plan.latency_ms <= 14.0 and r.winner == strategy
    assert plan.top1 == pytest.approx(0.9 - sum(DROP[b] for b in plan.removed))


def test_knapsack_finds_the_cheapest_set_on_additive_scores():
    r = search(FakeOracle(), latency, list(DROP), 14.0, ["knapsack"])
    # 6 ms to save: {b, e} (drop 0.050) beats {a, c} (0.051) and {a, b, e} (0.051)
    assert sorted(r.best["knapsack"].removed) == ["b", "e"]


def test_base_that_fits_removes_nothing_and_unreachable_reports_the_floor():
    assert search(FakeOracle(), latency, list(DROP), 25.0).winner == "none"
    r = search(FakeOracle(), latency, list(DROP), 5.0)
    assert not r.reachable and r.floor.latency_ms == latency(list(DROP)) and not r.best


def test_unknown_strategy_is_refused_and_the_front_is_monotone():
    with pytest.raises(ValueError):
        search(FakeOracle(), latency, list(DROP), 14.0, ["gready"])
    r = search(FakeOracle(), latency, list(DROP), 10.0)
    front = pareto_front(r.considered)
    assert all(p.latency_ms <= q.latency_ms and p.top1 < q.top1 for p, q in zip(front, front[1:]))
