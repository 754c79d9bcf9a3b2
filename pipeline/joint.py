"""The joint search: one latency-aware greedy over every enabled lever.

Each step offers every move the levers allow from the current plan (remove block b, shrink
group g by one step, lower the input size by one step), predicts each resulting plan's
latency, **measures** each one's accuracy and loss on the scoring images (the seed's
principle: a move is judged by measurement, not by a proxy), and takes the move that loses
the least accuracy per millisecond saved (loss breaks ties), as NetAdapt does. When some moves
reach the budget, the most accurate of them is taken if it is at least as accurate as that
cheapest-per-ms move (finishing then costs nothing extra); otherwise the greedy goes on, so one
expensive move that happens to reach the budget does not beat two cheap ones. Moves that save
nothing (a channel group inside a removed block) are skipped. With a ``screen`` (the same
measurement on fewer images), every move is screened and only the ``finalists`` best by it (and
the most accurate that reaches the budget) are measured in full, on which the choice is made:
successive halving, so every move is still judged by measuring it. The search only sees callables, so it is tested on
fakes; the build supplies real ones (``edgeprune.build.space``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgeprune.pipeline.levers import PlanState
from edgeprune.pipeline.plan import Plan

Moves = Callable[[PlanState], dict[str, PlanState]]           # move label -> the plan it leads to
Latency = Callable[[PlanState], float]                          # ms on the budget's device
Measure = Callable[[Sequence[PlanState]], list[tuple[float, float]]]   # (top-1, loss) of each plan
FINALISTS = 8              # moves per step measured on all the scoring images after the screen


@dataclass
class JointSpace:
    moves: Moves
    latency: Latency
    measure: Measure
    budget_ms: float
    considered: list[Plan]
    start: PlanState = PlanState()
    screen: Measure | None = None       # the same measurement on fewer images: it picks the finalists
    finalists: int = FINALISTS          # moves per step measured in full after the screen


def joint_greedy(name: str, space: JointSpace) -> Plan | None:
    """The greedy's plan within ``space.budget_ms``, or None when the moves run out first."""
    state = space.start
    (top1, loss), = space.measure([state])
    lat = space.latency(state)
    while lat > space.budget_ms:
        nxt = space.moves(state)
        lats = {m: space.latency(s) for m, s in nxt.items()}
        useful = [m for m in nxt if lats[m] < lat]
        if not useful:
            return None
        if space.screen is not None and len(useful) > space.finalists:
            useful = _finalists(space, state, nxt, useful, lats, lat)
        scores = dict(zip(useful, space.measure([nxt[m] for m in useful])))
        for m in useful:
            space.considered.append(Plan(name, nxt[m].tokens(), lats[m], *scores[m]))
        pick = min(useful, key=lambda m: _cost(m, scores, lats, lat, (top1, loss)))
        reaching = [m for m in useful if lats[m] <= space.budget_ms]
        if reaching:     # finish now only if that costs no more accuracy than the cheapest move per ms
            best = max(reaching, key=lambda m: (scores[m][0], -scores[m][1], m))
            if (scores[best][0], -scores[best][1]) >= (scores[pick][0], -scores[pick][1]):
                pick = best
        state, (top1, loss), lat = nxt[pick], scores[pick], lats[pick]
    return Plan(name, state.tokens(), lat, top1, loss)


def _finalists(space: JointSpace, state: PlanState, nxt: dict[str, PlanState], useful: list[str],
               lats: dict[str, float], lat: float) -> list[str]:
    """The moves the screen ranks best per ms saved, and the most accurate one that reaches the budget."""
    assert space.screen is not None
    here, *screened = space.screen([state, *(nxt[m] for m in useful)])
    scores = dict(zip(useful, screened))
    keep = sorted(useful, key=lambda m: _cost(m, scores, lats, lat, here))[:space.finalists]
    reaching = [m for m in useful if lats[m] <= space.budget_ms]
    if reaching:
        best = max(reaching, key=lambda m: (scores[m][0], -scores[m][1], m))
        keep += [] if best in keep else [best]
    return keep


def _cost(m: str, scores: dict, lats: dict, lat: float, here: tuple[float, float]) -> tuple[float, float, str]:
    """Top-1 lost per ms saved by move ``m`` (from ``here``, the current plan's), then loss gained per ms."""
    saved = lat - lats[m]
    return ((here[0] - scores[m][0]) / saved, (scores[m][1] - here[1]) / saved, m)
