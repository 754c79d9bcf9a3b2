"""Plan search: the block-removal plan with the best accuracy whose device latency fits a budget.

Three strategies, all sharing one memo of measured accuracies (``AccuracyOracle``) and one
latency model (``latency(removed) -> ms``, e.g. the predictor's block table):

* ``accuracy-greedy`` - the seed method: remove the block whose removal costs the least
  accuracy, re-score the rest on the pruned model, repeat until the budget is met.
* ``latency-greedy``  - re-scored like the seed method, but each step removes the block with
  the least accuracy lost per millisecond saved; a step that can reach the budget takes the
  most accurate block that does.
* ``knapsack``        - exact 0/1 knapsack (dynamic programming over discretised savings) on
  the one-shot scores: least summed one-shot accuracy loss whose summed savings reach the
  budget; the chosen set is then measured, and the search is repeated at intermediate
  budgets to trace the front.

Every plan evaluated is kept: together they trace the accuracy-latency Pareto front.
"""

from __future__ import annotations

import math
from functools import partial
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from torch import nn

from edgeprune.pipeline.blocks import Block, remove_blocks
from edgeprune.pipeline.importance import ScoreContext, removal_accuracy

Latency = Callable[[Sequence[str]], float]


@dataclass
class Plan:
    strategy: str
    removed: list[str]
    latency_ms: float          # predicted by the latency model the search used
    top1: float                # measured on the scoring images
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


class AccuracyOracle:
    """Accuracy and loss of the model minus any set of blocks on the scoring images, memoised.

    ``memo`` maps a sorted, comma-joined set of block names to (top1, loss); it is plain JSON
    so a build can cache it and resume.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[Block], batches: Sequence, ctx: ScoreContext,
                 memo: dict[str, list[float]] | None = None, on_update: Callable[[], None] | None = None):
        self.model, self.blocks, self.batches, self.ctx = model, list(blocks), batches, ctx
        self.memo = memo if memo is not None else {}
        self.on_update = on_update or (lambda: None)
        self.evaluations = 0
        self.images = 0                 # images run through (a removal re-runs only the graph from its block on)
        self._per_pass: int | None = None   # images in one pass over the batches (counted when first needed)

    @staticmethod
    def key(removed: Sequence[str]) -> str:
        return ",".join(sorted(removed))

    @staticmethod
    def valid_memo(obj: object) -> bool:
        """Whether ``obj`` has the memo's shape, ``{str: [top1, loss]}`` of numbers (a cached memo
        that does not is discarded and measured again)."""
        def number(x: object) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)
        return isinstance(obj, dict) and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(number(x) for x in v)
            for k, v in obj.items())

    def _pruned(self, removed: Sequence[str]) -> nn.Module:
        return remove_blocks(self.model, removed, self.blocks, replace_projection=True) if removed else self.model

    def __call__(self, removed: Sequence[str]) -> tuple[float, float]:
        k = self.key(removed)
        if k not in self.memo:
            if removed:
                last = self._block(removed[-1])
                _, per = removal_accuracy(self._pruned(list(removed[:-1])), [last], self.batches, self.ctx)
                self.memo[k] = list(per[last.name])
            else:
                base, _ = removal_accuracy(self.model, [], self.batches, self.ctx)
                self.memo[k] = list(base)
            self.evaluations += 1
            self.images += self._images()
            self.on_update()
        return tuple(self.memo[k])  # type: ignore[return-value]

    def _images(self) -> int:
        if self._per_pass is None:
            self._per_pass = sum(len(b[0]) for b in self.batches)
        return self._per_pass

    def _block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    def extend(self, removed: Sequence[str], candidates: Sequence[str]) -> dict[str, tuple[float, float]]:
        """Accuracy of ``removed + [c]`` for every candidate c, scored in one prefix-sharing pass."""
        todo = [c for c in candidates if self.key([*removed, c]) not in self.memo]
        if todo:
            base_model = self._pruned(list(removed))
            (b1, bl), per = removal_accuracy(base_model, [self._block(c) for c in todo], self.batches, self.ctx)
            self.memo.setdefault(self.key(removed), [b1, bl])
            for c, v in per.items():
                self.memo[self.key([*removed, c])] = list(v)
            self.evaluations += len(todo)
            self.images += (1 + len(todo)) * self._images()
            self.on_update()
        return {c: tuple(self.memo[self.key([*removed, c])]) for c in candidates}  # type: ignore[misc]


@dataclass
class SearchResult:
    budget_ms: float
    base: Plan
    best: dict[str, Plan]                       # strategy -> its plan within budget (if any)
    considered: list[Plan] = field(default_factory=list)
    winner: str | None = None
    reachable: bool = True
    floor: Plan | None = None                   # every candidate removed: the fastest reachable

    def to_dict(self) -> dict:
        return {"budget_ms": self.budget_ms, "base": self.base.to_dict(), "winner": self.winner,
                "reachable": self.reachable, "floor": self.floor.to_dict() if self.floor else None,
                "best": {k: v.to_dict() for k, v in self.best.items()},
                "considered": [p.to_dict() for p in self.considered]}


def _greedy(name: str, space: "SearchSpace", pick: str) -> Plan | None:
    oracle, latency, candidates, budget = space.oracle, space.latency, space.candidates, space.budget_ms
    considered = space.considered
    removed: list[str] = []
    top1, loss = oracle([])
    lat = latency(removed)
    while lat > budget and len(removed) < len(candidates):
        rest = [c for c in candidates if c not in removed]
        scores = oracle.extend(removed, rest)
        lats = {c: latency([*removed, c]) for c in rest}
        for c in rest:
            considered.append(Plan(name, [*removed, c], lats[c], *scores[c]))
        reaching = [c for c in rest if lats[c] <= budget]
        if reaching:  # the last step: the most accurate block that meets the budget
            nxt = max(reaching, key=lambda c: (scores[c][0], -scores[c][1], c))
        elif pick == "accuracy":
            nxt = max(rest, key=lambda c: (scores[c][0], -scores[c][1], c))
        else:  # accuracy lost per ms saved (loss increase breaks ties and zero-drop cases)
            def cost(c: str) -> tuple[float, float]:
                saved = max(lat - lats[c], 1e-9)
                return ((top1 - scores[c][0]) / saved, (scores[c][1] - loss) / saved)
            nxt = min(rest, key=lambda c: (*cost(c), c))
        removed.append(nxt)
        top1, loss = scores[nxt]
        lat = lats[nxt]
    if lat > budget:
        return None
    return Plan(name, removed, lat, top1, loss)


def _knapsack(oneshot: dict[str, float], saved: dict[str, float], need: float, resolution: int = 400) -> list[str]:
    """Least summed ``oneshot`` loss over sets whose summed ``saved`` ms reach ``need`` (0/1 DP)."""
    names = list(oneshot)
    if need <= 0:
        return []
    if sum(saved.values()) < need:
        return names
    unit = need / resolution
    w = [max(0, math.floor(saved[n] / unit)) for n in names]   # floor: never overstate savings
    cap = resolution
    INF = float("inf")
    best = [0.0] + [INF] * cap                  # best[s] = least loss with savings >= s units (capped)
    choice: list[list[str]] = [[]] + [[] for _ in range(cap)]
    for n, wi in zip(names, w):
        v = max(oneshot[n], 0.0) + 1e-9 * (1 + abs(oneshot[n]))
        for s in range(cap, -1, -1):
            prev = max(0, s - wi)
            if best[prev] + v < best[s]:
                best[s] = best[prev] + v
                choice[s] = choice[prev] + [n]
    return choice[cap] if best[cap] < INF else names


def _knapsack_strategy(name: str, space: "SearchSpace") -> Plan | None:
    oracle, latency, candidates, budget = space.oracle, space.latency, space.candidates, space.budget_ms
    base, considered, front_points = space.base, space.considered, space.front_points
    one = oracle.extend([], candidates)
    drop = {c: base.top1 - one[c][0] + 1e-3 * (one[c][1] - base.loss) for c in candidates}
    saved = {c: base.latency_ms - latency([c]) for c in candidates}
    chosen = None
    # intermediate budgets trace the front; the last one is the real budget
    targets = [base.latency_ms - (base.latency_ms - budget) * (i + 1) / front_points for i in range(front_points)]
    for target in targets:
        need = base.latency_ms - target
        for _ in range(6):  # savings are not exactly additive: tighten until the set fits
            removed = _knapsack(drop, saved, need)
            lat = latency(removed)
            if lat <= target or len(removed) == len(candidates):
                break
            need += (lat - target) * 1.05
        top1, loss = oracle(removed)
        plan = Plan(name, removed, lat, top1, loss)
        if target is targets[-1]:
            chosen = plan if lat <= budget else None
        else:
            considered.append(plan)
    return chosen


@dataclass
class SearchSpace:
    """What every strategy searches: the oracle, the latency model, the candidates, the budget;
    a strategy appends every plan it measures to ``considered`` and returns its best that fits."""

    oracle: AccuracyOracle
    latency: Latency
    candidates: list[str]
    budget_ms: float
    base: Plan
    considered: list[Plan]
    front_points: int = 8


Strategy = Callable[[str, SearchSpace], "Plan | None"]      # (its registered name, the space) -> plan

STRATEGIES: dict[str, Strategy] = {
    "latency-greedy": partial(_greedy, pick="ratio"),
    "accuracy-greedy": partial(_greedy, pick="accuracy"),
    "knapsack": _knapsack_strategy,
}


def search(oracle: AccuracyOracle, latency: Latency, candidates: Sequence[str], budget_ms: float,
           strategies: Sequence[str] = tuple(STRATEGIES), front_points: int = 8) -> SearchResult:
    """Run the strategies (names in :data:`STRATEGIES`); return every plan considered and the best within budget."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}")
    candidates = list(candidates)
    base_top1, base_loss = oracle([])
    base = Plan("none", [], latency([]), base_top1, base_loss)
    considered = [base]
    result = SearchResult(budget_ms, base, {}, considered)
    if base.latency_ms <= budget_ms:
        result.best = {"none": base}
        result.winner = "none"
        return result
    floor_lat = latency(candidates)
    if floor_lat > budget_ms:
        top1, loss = oracle(candidates)
        result.floor = Plan("all", candidates, floor_lat, top1, loss)
        considered.append(result.floor)
        result.reachable = False
        return result
    for strategy in strategies:
        plan = STRATEGIES[strategy](strategy, SearchSpace(oracle, latency, candidates, budget_ms, base, considered,
                                                          front_points))
        if plan is not None:
            result.best[strategy] = plan
            considered.append(plan)
    if result.best:
        result.winner = max(result.best, key=lambda s: (result.best[s].top1, -result.best[s].loss,
                                                         -result.best[s].latency_ms))
    return result


def pareto_front(plans: Sequence[Plan]) -> list[Plan]:
    """Plans no other plan beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], -1.0
    for p in sorted(plans, key=lambda p: (p.latency_ms, -p.top1)):
        if p.top1 > best:
            front.append(p)
            best = p.top1
    return front
