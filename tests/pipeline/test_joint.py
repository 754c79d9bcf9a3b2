"""The joint greedy on fakes: latency and accuracy are simple functions of the plan."""

from edgeprune.pipeline.joint import JointSpace, joint_greedy
from edgeprune.pipeline.levers import PlanState

SAVE = {"a": 4.0, "b": 1.0, "g": 2.0, "r": 3.0}     # ms each move saves
COST = {"a": 0.08, "b": 0.001, "g": 0.01, "r": 0.02}  # top-1 each move loses


def _moves(state: PlanState) -> dict[str, PlanState]:
    out = {f"remove {b}": state.with_block(b) for b in ("a", "b") if b not in state.blocks}
    if state.steps.get("g", 0) < 3:
        out["shrink g"] = state.with_channel_step("g")
    if state.resolution is None:
        out["input 24"] = state.with_resolution(24)
    return out


def _used(state: PlanState) -> list[tuple[str, int]]:
    return [*((b, 1) for b in state.blocks), ("g", state.steps.get("g", 0)), ("r", int(state.resolution is not None))]


def _latency(state: PlanState) -> float:
    return 20.0 - sum(SAVE[k] * n for k, n in _used(state))


def _measure(states):
    return [(0.9 - sum(COST[k] * n for k, n in _used(s)), 0.3 + sum(COST[k] * n for k, n in _used(s)))
            for s in states]


def _space(budget, moves=_moves):
    measured = []

    def measure(states):
        measured.extend(states)
        return _measure(states)
    return JointSpace(moves, _latency, measure, budget, []), measured


def test_greedy_takes_cheapest_accuracy_per_ms_until_the_budget():
    space, _ = _space(13.0)
    plan = joint_greedy("joint-greedy", space)
    # per ms: b 0.001, g 0.005, r 0.0067, a 0.02 -> b (19), g (17), g (15), then a move that reaches 13:
    # g (13, loses 0.01) beats r (12, 0.02) and a (11, 0.08)
    assert PlanState.from_tokens(plan.removed) == PlanState(frozenset({"b"}), (("g", 3),))
    assert plan.latency_ms == 13.0
    assert abs(plan.top1 - (0.9 - 0.001 - 0.03)) < 1e-12
    assert all(p.strategy == "joint-greedy" for p in space.considered)


def test_greedy_combines_levers_to_reach_what_none_reaches_alone():
    space, _ = _space(7.0)
    plan = joint_greedy("joint-greedy", space)
    assert plan is not None and plan.latency_ms <= 7.0
    assert PlanState.from_tokens(plan.removed).levers() == ["blocks", "channels", "resolution"]


def test_every_move_of_a_step_is_measured():
    space, measured = _space(19.5)
    joint_greedy("joint-greedy", space)
    assert len(measured) == 1 + 4          # the start, then the four moves of the first step


def test_moves_that_save_nothing_are_skipped_and_exhaustion_gives_none():
    def stuck(state):
        return {"noop": state.with_channel_step("zero")} if not state.channels else {}
    space, measured = _space(5.0, stuck)
    assert joint_greedy("joint-greedy", space) is None
    assert len(measured) == 1              # the no-op move was not measured


def test_budget_already_met_returns_the_start():
    space, _ = _space(25.0)
    plan = joint_greedy("joint-greedy", space)
    assert plan.removed == [] and plan.latency_ms == 20.0


def test_a_screen_picks_finalists_and_the_full_measure_decides():
    space, measured = _space(19.5)
    screened = []

    def screen(states):
        screened.extend(states)
        return _measure(states)
    space.screen, space.finalists = screen, 2
    plan = joint_greedy("joint-greedy", space)
    assert len(screened) == 1 + 4              # the current plan and every move, cheaply
    assert len(measured) == 1 + 2              # the start, then only the two finalists in full
    assert PlanState.from_tokens(plan.removed) == PlanState(frozenset({"b"}))   # 19 ms, the cheapest per ms
