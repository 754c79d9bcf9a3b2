"""The table search on fakes: additive tables (where the optimum is known), interactions, the deadline."""

from __future__ import annotations

import itertools

import pytest

from edgeprune.pipeline.levers import PlanState
from edgeprune.pipeline.table_search import JOINT_STRATEGIES, TableSpace, _Search, rounds_for, table_search

SAVE = {"a": 3.0, "b": 2.5, "c": 2.0, "d": 1.0, "e": 4.0}       # ms each block saves
COST = {"a": 0.05, "b": 0.01, "c": 0.02, "d": 0.001, "e": 0.09}  # top-1 each costs
GROUP_STEPS, GROUP_SAVE, GROUP_COST = 3, 1.5, 0.012             # channel group "g": per step
BASE = 20.0


def moves(state: PlanState) -> dict[str, PlanState]:
    out = {f"remove {b}": state.with_block(b) for b in SAVE if b not in state.blocks}
    if state.steps.get("g", 0) < GROUP_STEPS:
        out["shrink g"] = state.with_channel_step("g")
    return out


def latency(state: PlanState, interact: bool = False) -> float:
    g = state.steps.get("g", 0)
    group = 0.0 if interact and "e" in state.blocks else g * GROUP_SAVE   # "g" lives inside block "e"
    return BASE - sum(SAVE[b] for b in state.blocks) - group


def top1(state: PlanState) -> float:
    return 0.9 - sum(COST[b] for b in state.blocks) - state.steps.get("g", 0) * GROUP_COST


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, states):
        self.calls += len(states)
        return [(top1(s), 1.0 - top1(s)) for s in states]


def space(budget: float, **kw) -> TableSpace:
    lat = kw.pop("latency", latency)
    return TableSpace(moves, lat, Counting(), Counting(), budget, [], **kw)


def brute_force(budget: float) -> float:
    return max(top1(s) for s in _plans() if latency(s) <= budget)


@pytest.mark.parametrize("budget", [17.5, 14.0, 11.0, 8.0, 5.5])
def test_one_round_is_optimal_on_an_additive_table_among_plans_that_take_each_move_once(budget):
    """A round takes each move at most once (the table measured one step of each) unless the aim needs more."""
    sp = space(budget, rounds=1)
    out = table_search("table", sp)
    assert out.plan is not None and out.plan.latency_ms <= budget
    once = max((top1(s) for s in _plans(once=True) if latency(s) <= budget), default=None)
    assert out.plan.top1 == pytest.approx(once if once is not None else brute_force(budget))


def _plans(once: bool = False):
    for n in range(len(SAVE) + 1):
        for blocks in itertools.combinations(SAVE, n):
            for g in range(2 if once else GROUP_STEPS + 1):
                yield PlanState(frozenset(blocks), (("g", g),) if g else ())


@pytest.mark.parametrize("budget", [17.5, 14.0, 11.0, 8.0, 5.5])
def test_rounds_stay_feasible_and_near_the_optimum(budget):
    sp = space(budget)
    out = table_search("table", sp)
    assert out.plan is not None and out.plan.latency_ms <= budget
    assert out.plan.top1 >= brute_force(budget) - 0.02
    assert all(p.strategy == "table" for p in sp.considered)
    assert 0 < out.measured <= sp.measure.calls and 0 < out.screened <= sp.screen.calls


def test_the_knapsack_solver_is_optimal_and_never_over_its_target():
    sp = space(1.0)
    search = _Search(sp, "table")
    search.refresh(PlanState(), lambda m: False)
    for target in (18.0, 15.0, 12.0, 9.0, 6.0, 4.0):
        plan = search.knapsack(PlanState(), target, lambda c: c[0], 64)
        assert latency(plan) <= target
        assert top1(plan) == pytest.approx(brute_force(target))


def test_interactions_are_priced_by_the_latency_model_not_summed():
    """Shrinking "g" saves nothing once block "e" is removed: the chosen plan still fits, by its own latency."""
    lat = lambda s: latency(s, interact=True)   # noqa: E731
    for budget in (12.0, 9.0, 7.5):               # 7.5: every block removed, "g" saving nothing
        sp = space(budget, latency=lat)
        out = table_search("table", sp)
        assert out.plan is not None and lat(PlanState.from_tokens(out.plan.removed)) <= budget


def test_screens_grow_with_moves_not_steps_times_moves():
    """The table search screens each move about once; the joint greedy screens every move at every step."""
    tab = space(5.5, rounds=4)
    table_search("table", tab)
    greedy = space(5.5)
    JOINT_STRATEGIES["joint-greedy"]("joint-greedy", greedy)
    moves_offered = len(moves(PlanState()))
    assert tab.screen.calls <= 3 * moves_offered < greedy.screen.calls + greedy.measure.calls


def test_rounds_follow_the_distance_to_the_budget():
    assert [rounds_for(100.0, b) for b in (75.0, 50.0, 35.0, 22.0, 1.0, 100.0, 120.0)] == [3, 7, 10, 12, 12, 3, 3]


def test_past_the_deadline_it_solves_for_the_budget_and_says_so():
    now = [0.0]

    def measure(states):
        now[0] += 10.0 * len(states)          # every measurement takes 10 s of the fake clock
        return [(top1(s), 1.0 - top1(s)) for s in states]
    sp = TableSpace(moves, latency, measure, measure, 5.5, [], rounds=6, deadline=50.0, clock=lambda: now[0])
    out = table_search("table", sp)
    assert out.stopped and out.rounds < 6
    assert out.plan is not None and out.plan.latency_ms <= 5.5
    fitting = [p for p in sp.considered if p.latency_ms <= 5.5]
    assert out.plan.top1 == max(p.top1 for p in fitting)


def test_no_plan_when_the_moves_cannot_reach_the_budget():
    out = table_search("table", space(0.5))
    assert out.plan is None
