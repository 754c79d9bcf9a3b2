"""Short-listing and choosing plans: distinct block sets, proxy plans, choice after fine-tune."""

from __future__ import annotations

import pytest

from edgeprune.pipeline.plan import Plan
from edgeprune.pipeline.select import Candidate, choose, proxy_plans, shortlist, until_budget

MS = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}


def latency(removed) -> float:
    return 10.0 - sum(MS[n] for n in removed)


def test_until_budget_takes_the_shortest_prefix_that_fits():
    assert until_budget(["a", "b", "c", "d"], latency, 7.0) == ["a", "b"]
    assert until_budget(["d", "a"], latency, 7.0) == ["d"]
    assert until_budget(["a"], latency, 10.0) == []
    assert until_budget(["a", "b"], latency, 1.0) == ["a", "b"]      # runs out: caller checks the latency


def test_proxy_plans_skip_orders_that_cannot_reach_the_budget():
    scored = []
    oracle = lambda removed: (scored.append(tuple(removed)) or (0.9 - 0.1 * len(removed), 0.5))  # noqa: E731
    plans = proxy_plans({"x": ["c", "a", "b"], "y": ["a", "b"]}, latency, 6.5, oracle)
    assert [(p.strategy, p.removed, p.latency_ms) for p in plans] == [("proxy:x", ["c", "a"], 6.0)]
    assert plans[0].top1 == pytest.approx(0.7) and scored == [("c", "a")]


def test_shortlist_merges_equal_sets_and_keeps_the_best_scored():
    plans = [Plan("latency-greedy", ["a", "b"], 7.0, 0.80, 0.6),
             Plan("accuracy-greedy", ["b", "a"], 7.0, 0.80, 0.6),
             Plan("knapsack", ["c"], 7.0, 0.70, 0.9),
             Plan("proxy:bn-gamma", ["d"], 6.0, 0.85, 0.5),
             Plan("proxy:l1", ["a", "c"], 6.0, 0.60, 1.2)]
    short = shortlist(plans, 3)
    assert [c.removed for c in short] == [["d"], ["a", "b"], ["c"]]
    assert short[1].proposed_by == ["latency-greedy", "accuracy-greedy"]
    assert [c.label for c in shortlist(plans, 1)] == ["proxy:bn-gamma"]


def test_choose_prefers_the_loss_after_fine_tune_and_falls_back_to_before():
    a = Candidate(["a"], 9.0, top1=0.90, loss=0.3, proposed_by=["latency-greedy"])
    b = Candidate(["b"], 8.0, top1=0.80, loss=0.6, proposed_by=["proxy:norm-ratio"])
    assert choose([a, b]) is a                          # nothing fine-tuned: the best before
    a.recovered_top1, a.recovered_loss = 0.93, 0.25
    b.recovered_top1, b.recovered_loss = 0.92, 0.20
    assert choose([a, b]) is b                          # the fine-tune decides, by its loss
    b.recovered_top1, b.recovered_loss = 0.92, 0.25
    assert choose([a, b]) is a                          # equal loss: higher top-1
    with pytest.raises(ValueError):
        choose([])
