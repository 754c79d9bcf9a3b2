"""The table search: what each move costs, measured once; plans solved over the table; the few proposals measured whole.

The joint greedy measures every move at every step, so its cost grows as steps x moves. This
search measures a **table** instead (HALP, LayerMerge and NetAdapt's shape, with the seed's
principle kept: a move's accuracy cost is measured, never guessed from a proxy):

1. **Table.** For every move the levers offer from the current plan: the latency it saves (the
   build's latency model, cheap: ``devices.plan_latency``) and the accuracy it costs, *measured*
   on the screening images (``screen``: top-1 and loss of the plan with that one move).
2. **Solve.** Aim this round at a latency between the current plan's and the budget (about
   :data:`ROUND_RATIO` of it per round, 3-12 rounds, the last at the budget: a trust region, as
   NetAdapt's fixed steps) and propose plans that reach it at the least summed cost: a greedy on
   cost per millisecond saved (latency re-read after every move, so interactions between moves are
   priced exactly) ranked once by top-1 lost and once by loss gained, and a multiple-choice knapsack
   on each. Each move is taken once per round (the table measured one step of it, and a group's
   second step costs more than its first), more often only where once cannot reach the aim.
3. **Measure whole.** Each proposal is measured in full (``measure``); the most accurate that
   reaches the round's aim becomes the current plan. Interactions the table cannot see are caught
   here: a plan is only ever chosen on its own measurement.
4. **Refresh** the moves whose part of the plan moved (a shrunk group's next step, a lower input)
   and the cheaper half per ms saved (the moves the solver reaches for next, whose costs rise as
   the plan shrinks); every other move keeps its measured cost until it comes into reach.

Anytime: past ``deadline`` the search stops refreshing and solves for the budget at once with the
table it has, measures those proposals and returns the best measured plan that fits
(``TableOutcome.stopped``). Like the joint greedy it only sees callables, so it is tested on fakes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from edgeprune.pipeline.joint import FINALISTS, JointSpace, Latency, Measure, Moves, joint_greedy
from edgeprune.pipeline.levers import PlanState
from edgeprune.pipeline.plan import Plan

ROUND_RATIO = 0.9            # each round aims at about this share of the current plan's latency ...
ROUNDS = (3, 12)             # ... in at least 3 and at most 12 solve-and-measure rounds to the budget
REPEATS = 64                 # how often the solver may take one move in a round when once each cannot reach it
KNAPSACK_UNITS = 400         # the knapsack's resolution: savings in 1/400 of what the round needs


@dataclass
class Progress:
    round: int
    rounds: int
    measured: int            # plans measured in full so far
    screened: int            # moves measured on the screening images so far
    eta_s: float | None      # time left, estimated from the rounds done


@dataclass
class TableSpace:
    moves: Moves
    latency: Latency
    measure: Measure                    # (top-1, loss) of whole plans on all the scoring images
    screen: Measure                     # the same on fewer images: the table's costs
    budget_ms: float
    considered: list[Plan]
    start: PlanState = PlanState()
    rounds: int | None = None           # solve-and-measure rounds (None: from ROUND_RATIO, within ROUNDS)
    refresh: str = "contenders"         # which entries each round re-screens: "moved", "contenders" or "all"
    deadline: float | None = None       # clock() past which the search solves for the budget at once
    clock: Callable[[], float] = time.monotonic
    on_progress: Callable[[Progress], None] = lambda p: None


@dataclass
class TableOutcome:
    plan: Plan | None                   # the best measured plan within the budget (None: none reached)
    rounds: int                         # rounds run
    stopped: bool                       # the deadline cut the refreshes short
    measured: int = 0                   # plans measured in full
    screened: int = 0                   # moves screened (the table's entries)


@dataclass
class _Entry:
    cost: tuple[float, float]           # (top-1 lost, loss gained) by one more of this move
    measured_at: PlanState


@dataclass
class _Search:
    space: TableSpace
    name: str
    table: dict[str, _Entry] = field(default_factory=dict)
    measured: int = 0
    screened: int = 0

    # ---------------------------------------------------------------- the table

    def refresh(self, state: PlanState, stale: Callable[[str], bool]) -> None:
        """Screen, from ``state``, every move that has no entry yet or whose entry is ``stale``."""
        nxt = self.space.moves(state)
        for label in [m for m in self.table if m not in nxt]:
            del self.table[label]           # a move the plan no longer offers (a removed block, a group at its end)
        todo = [m for m in nxt if m not in self.table or stale(m)]
        if not todo:
            return
        here, *scores = self.space.screen([state, *(nxt[m] for m in todo)])
        self.screened += len(todo)
        for m, (top1, loss) in zip(todo, scores):
            self.table[m] = _Entry((here[0] - top1, loss - here[1]), state)

    def stale(self, state: PlanState, moved: set[str]) -> Callable[[str], bool]:
        """Which entries to measure again from ``state``: those whose part of the plan moved, and (``contenders``)
        the cheaper half per ms saved, the moves the solver will take next, whose costs rise as the plan
        shrinks; the rest keep their costs until they come into reach. ``all``: every entry."""
        policy = self.space.refresh
        if policy == "all":
            return lambda m: self.table[m].measured_at != state
        contenders: set[str] = set()
        if policy == "contenders" and self.table:
            lat, offered = self.space.latency(state), self.space.moves(state)
            per_ms = {}
            for m, e in self.table.items():
                if m in offered:
                    saved = lat - self.space.latency(offered[m])
                    per_ms[m] = (max(e.cost[0], 0.0) + 1e-3 * max(e.cost[1], 0.0)) / saved if saved > 0 else math.inf
            ranked = sorted(per_ms, key=lambda m: (per_ms[m], m))
            contenders = set(ranked[: (len(ranked) + 1) // 2])
        return lambda m: self.table[m].measured_at != state and (m in moved or m in contenders)

    # ---------------------------------------------------------------- the solver

    def apply(self, state: PlanState, label: str) -> PlanState | None:
        return self.space.moves(state).get(label)

    def greedy(self, state: PlanState, target: float, key: Callable[[tuple[float, float]], tuple],
               repeat: int) -> PlanState:
        """Take the move of least ``key(cost)`` per ms saved (each at most ``repeat`` times), latency re-read after
        each, until ``target``."""
        lat = self.space.latency(state)
        taken: dict[str, int] = {}
        while lat > target:
            best = None
            offered = self.space.moves(state)
            for label, entry in self.table.items():
                nxt = offered.get(label)
                if nxt is None or taken.get(label, 0) >= repeat:
                    continue
                saved = lat - self.space.latency(nxt)
                if saved <= 0:
                    continue
                rank = tuple(max(c, 0.0) / saved for c in key(entry.cost)) + (-saved, label)
                if best is None or rank < best[0]:
                    best = (rank, nxt, saved)
            if best is None:
                return state
            state, lat = best[1], lat - best[2]
            taken[best[0][-1]] = taken.get(best[0][-1], 0) + 1
        return state

    def knapsack(self, state: PlanState, target: float, scalar: Callable[[tuple[float, float]], float],
                 repeat: int) -> PlanState:
        """Least summed ``scalar(cost)`` (negative costs count as none) whose savings reach ``target``: each
        move taken 0..``repeat`` times (n steps cost n times its measured cost; the savings of n steps read from the
        latency model), a multiple-choice knapsack by dynamic programming over discretised savings; the
        chosen plan's own latency is then read, and the need raised by any shortfall (at most 6 times)."""
        base = self.space.latency(state)
        options: dict[str, list[tuple[float, float, PlanState]]] = {}    # label -> (saved, cost, plan) per count
        for label, entry in self.table.items():
            s, steps = state, []
            for n in range(1, repeat + 1):
                s = self.apply(s, label)
                if s is None:
                    break
                cost = n * max(scalar(entry.cost), 0.0) + 1e-9 * n
                steps.append((base - self.space.latency(s), cost, s))
            options[label] = [o for o in steps if o[0] > 0]
        need = base - target
        chosen = state
        for _ in range(6):
            picks = _multiple_choice(options, need)
            chosen = state
            for label, n in picks.items():
                for _ in range(n):
                    chosen = self.apply(chosen, label) or chosen
            over = self.space.latency(chosen) - target
            if over <= 0:
                break
            need += over * 1.05
        return chosen

    def proposals(self, state: PlanState, target: float) -> list[PlanState]:
        """The solver's plans for ``target``: greedy and knapsack, each on top-1 lost (the loss breaking ties: top-1
        on a few screening images moves in coarse steps) and on the loss gained (finer, and noisier). Each move is
        taken once (the table measured one step of it; a second step of a group costs more than its first), and
        again only where the target cannot be reached otherwise."""
        solvers = [lambda r: self.greedy(state, target, lambda c: c, r),
                   lambda r: self.greedy(state, target, lambda c: (c[1], c[0]), r),
                   lambda r: self.knapsack(state, target, lambda c: c[0] + 1e-3 * c[1], r),
                   lambda r: self.knapsack(state, target, lambda c: c[1] + 1e-3 * c[0], r)]
        out = []
        for solve in solvers:
            plan = solve(1)
            out.append(plan if self.space.latency(plan) <= target else solve(REPEATS))
        return list(dict.fromkeys(out))

    # ---------------------------------------------------------------- the rounds

    def whole(self, states: Sequence[PlanState]) -> list[Plan]:
        todo = list(states)
        scores = self.space.measure(todo)
        self.measured += len(todo)
        plans = [Plan(self.name, s.tokens(), self.space.latency(s), *score) for s, score in zip(todo, scores)]
        self.space.considered.extend(plans)
        return plans

    def run(self) -> TableOutcome:
        space = self.space
        state = space.start
        current, = self.whole([state])
        rounds = space.rounds or rounds_for(current.latency_ms, space.budget_ms)
        done, stopped, started = 0, False, space.clock()
        moved: set[str] = set()
        while current.latency_ms > space.budget_ms:
            late = space.deadline is not None and space.clock() > space.deadline
            stopped = stopped or late
            if not late or not self.table:
                self.refresh(state, self.stale(state, moved))
            left = 1 if stopped else max(1, rounds - done)
            target = space.budget_ms if left == 1 else current.latency_ms * (space.budget_ms / current.latency_ms) ** (1 / left)
            proposals = [p for p in self.proposals(state, target) if p != state]
            if not proposals or done >= 3 * rounds:
                break
            done += 1
            plans = self.whole(proposals)
            reaching = [p for p in plans if p.latency_ms <= target] or plans
            pick = max(reaching, key=lambda p: (p.top1, -p.loss, -p.latency_ms))
            chosen = PlanState.from_tokens(pick.removed)
            moved = {m for m in self.table if _moved(self, state, chosen, m)}
            state, current = chosen, pick
            elapsed = space.clock() - started
            space.on_progress(Progress(done, max(done, rounds), self.measured, self.screened,
                                       None if current.latency_ms <= space.budget_ms else
                                       elapsed / done * max(0, rounds - done)))
            if stopped:
                break
        fitting = [p for p in space.considered if p.strategy == self.name and p.latency_ms <= space.budget_ms]
        best = max(fitting, key=lambda p: (p.top1, -p.loss, -p.latency_ms)) if fitting else None
        return TableOutcome(best, done, stopped, self.measured, self.screened)


def rounds_for(start_ms: float, budget_ms: float) -> int:
    """Rounds from ``start_ms`` to ``budget_ms`` at about :data:`ROUND_RATIO` each, within :data:`ROUNDS`: on the
    bundled ResNet-56 four rounds to 35% of its latency lost 10 points of top-1 on the scoring images against
    ten (0.73 against 0.83, before fine-tune), and three rounds to 75% as much as four."""
    need = math.log(budget_ms / start_ms) / math.log(ROUND_RATIO) if 0 < budget_ms < start_ms else 1
    return int(min(ROUNDS[1], max(ROUNDS[0], math.ceil(need - 1e-9))))


def _moved(search: _Search, before: PlanState, after: PlanState, label: str) -> bool:
    """Whether the part of the plan that move ``label`` changes moved between ``before`` and ``after``."""
    a, b = search.apply(before, label), search.apply(after, label)
    if a is None or b is None:
        return True
    # the move's own change, read as what it adds to each plan: the same change from both plans means
    # the same part (a block not yet removed, a group's next step from the same count)
    return _change(before, a) != _change(after, b)


def _change(base: PlanState, moved: PlanState) -> tuple:
    steps, base_steps = moved.steps, base.steps
    return (tuple(sorted(moved.blocks - base.blocks)),
            tuple(sorted((g, s) for g, s in steps.items() if base_steps.get(g) != s)),
            moved.resolution if moved.resolution != base.resolution else None)


def _multiple_choice(options: dict[str, list[tuple[float, float, PlanState]]], need: float) -> dict[str, int]:
    """For each label a count (0..len(options)), least summed cost with summed savings >= ``need`` (savings
    rounded up to units of need / KNAPSACK_UNITS, so a plan exactly at the target is found; the caller reads
    the chosen plan's own latency and raises ``need`` by any shortfall); everything when even that falls short."""
    if need <= 0:
        return {}
    unit = need / KNAPSACK_UNITS
    inf = math.inf
    best = [0.0] + [inf] * KNAPSACK_UNITS
    pick: list[dict[str, int]] = [{} for _ in range(KNAPSACK_UNITS + 1)]
    for label, opts in options.items():
        prev_best, prev_pick = best[:], [dict(p) for p in pick]
        for n, (saved, cost, _) in enumerate(opts, start=1):
            w = max(0, math.ceil(saved / unit - 1e-9))
            for s in range(KNAPSACK_UNITS + 1):
                src = max(0, s - w)
                if prev_best[src] + cost < best[s]:
                    best[s] = prev_best[src] + cost
                    pick[s] = {**prev_pick[src], label: n}
    if best[KNAPSACK_UNITS] < inf:
        return pick[KNAPSACK_UNITS]
    return {label: len(opts) for label, opts in options.items() if opts}


def table_search(name: str, space: TableSpace) -> TableOutcome:
    """The table search's best measured plan within ``space.budget_ms`` (see the module docstring)."""
    return _Search(space, name).run()


def _joint_greedy(name: str, space: TableSpace) -> TableOutcome:
    """The joint greedy (``pipeline.joint``) on the same inputs: every move screened at every step, the
    finalists measured whole; ``measured`` and ``screened`` count every plan it asks for (cached ones too)."""
    counts = {"measure": 0, "screen": 0}

    def counted(kind: str, fn: Measure) -> Measure:
        def measure(states: Sequence[PlanState]) -> list[tuple[float, float]]:
            counts[kind] += len(states)
            return fn(states)
        return measure
    plan = joint_greedy(name, JointSpace(space.moves, space.latency, counted("measure", space.measure), space.budget_ms,
                                         space.considered, space.start, screen=counted("screen", space.screen),
                                         finalists=FINALISTS))
    return TableOutcome(plan, 0, False, counts["measure"], counts["screen"])


#: searches over every enabled lever (the build runs those named in --strategy when levers beyond blocks are on)
JOINT_STRATEGIES: dict[str, Callable[[str, TableSpace], TableOutcome]] = {
    "table": table_search,
    "joint-greedy": _joint_greedy,
}
