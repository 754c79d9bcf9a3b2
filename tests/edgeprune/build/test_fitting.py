"""The re-search loop on a fake search and fake latencies: fits at once, after tightening, never."""

from __future__ import annotations

import pytest

from edgeprune.build.fitting import SEARCH_ATTEMPTS, TIGHTEN_MARGIN, search_until_fits
from edgeprune.pipeline.plan import Plan, SearchResult
from edgeprune.pipeline.select import Candidate

BLOCK_MS = 1.0          # the fake latency model: 10 ms, each removed block saves 1 ms
BASE_MS = 10.0


def fake_search(budgets: list[float]):
    """Removes just enough blocks for the (planned) budget; records each budget it was asked."""
    def search_at(budget: float):
        budgets.append(budget)
        n = max(0, int(-(-(BASE_MS - budget) // BLOCK_MS)))     # ceil
        removed = [f"b{i}" for i in range(n)]
        plan = Plan("fake", removed, BASE_MS - n * BLOCK_MS, 0.9 - 0.01 * n, 0.3)
        result = SearchResult(budget, Plan("none", [], BASE_MS, 0.9, 0.3), {"fake": plan}, [plan], "fake")
        return result, [Candidate(removed, plan.latency_ms, plan.top1, plan.loss, ["fake"])]
    return search_at


def test_fits_at_once_when_the_graph_agrees_with_the_plan():
    budgets: list[float] = []
    out = search_until_fits(fake_search(budgets), lambda c: (c.latency_ms, "predicted:fake"), 7.5)
    assert budgets == [7.5] and len(out.attempts) == 1
    assert [c.removed for c in out.fitting] == [["b0", "b1", "b2"]]
    assert out.fitting[0].final_ms == 7.0 and out.attempts[0].source == "predicted:fake"


def test_fits_after_tightening_when_the_graph_runs_slower_than_planned():
    budgets: list[float] = []
    retries: list[float] = []
    # the exported graph runs 15% slower than the plan's estimate
    out = search_until_fits(fake_search(budgets), lambda c: (c.latency_ms * 1.15, "measured:fake"), 7.0,
                            on_retry=retries.append)
    assert len(budgets) >= 2 and budgets[0] == 7.0
    assert budgets[1] == pytest.approx(7.0 * 7.0 / (7.0 * 1.15) * TIGHTEN_MARGIN)   # first plan: 7.0 ms planned
    assert all(b2 < b1 for b1, b2 in zip(budgets, budgets[1:]))           # only ever tighter
    assert out.fitting and all(c.final_ms <= 7.0 for c in out.fitting)
    assert retries == [a.final_ms for a in out.attempts[:-1]]
    assert [a.attempt for a in out.attempts] == list(range(len(budgets)))


def test_never_fits_gives_up_after_the_attempts_with_the_closest():
    budgets: list[float] = []
    out = search_until_fits(fake_search(budgets), lambda c: (9.0 + 0.1 * len(c.removed), "measured:fake"), 5.0)
    assert len(budgets) == SEARCH_ATTEMPTS and not out.fitting
    assert out.reachable and out.closest_ms == min(c.final_ms for c in out.shortlist)
    assert len(out.attempts) == SEARCH_ATTEMPTS


def test_an_unreachable_search_stops_without_judging_any_graph():
    def search_at(budget):
        floor = Plan("all", ["b0"], 9.0, 0.5, 1.0)
        return SearchResult(budget, Plan("none", [], 10.0, 0.9, 0.3), {}, [], None, False, floor), []
    judged = []
    out = search_until_fits(search_at, lambda c: judged.append(c) or (0.0, "x"), 1.0)
    assert not out.reachable and not judged and out.search.floor.latency_ms == 9.0
