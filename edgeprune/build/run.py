"""``run_build``: the stages of a latency-budgeted build, in order.

The artifact is assembled in the cache's staging folder and renamed to ``<out>/artifact``
as the very last step, so an interrupted or failed build never leaves a partial artifact.
The whole build holds ``<out>/.lock`` (``flock``, released when the process ends however it
ends): a second build into the same folder fails at once, naming the build that holds it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from edgeprune.build import stages
from edgeprune.build.cache import BuildCache, wall_runs
from edgeprune.build.config import BuildConfig
from edgeprune.build.fitting import SEARCH_ATTEMPTS
from edgeprune.build.int8 import host_note
from edgeprune.build.report import write_report
from edgeprune.build.result import BuildOutcome, BuildResult, Unreachable
from edgeprune.devices.arm_verify import ArmVerifyConfig, verify_arm
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import update_manifest
from edgeprune.files import replace_folder, write_text_atomic
from edgeprune.pipeline.distributed import alone, barrier, world
from edgeprune.pipeline.levers import PlanState

EXIT_OK, EXIT_UNREACHABLE = 0, 3


def run_build(cfg: BuildConfig, say: stages.Say = lambda _m: None) -> BuildOutcome:
    """Run the whole build; return the exit code, a one-line message and the result.

    Under torchrun every rank runs it alike (the evaluations split across them, so all reach the same
    plans); rank 0 holds the lock and alone assembles, times and reports the artifact
    (``edgeprune.pipeline.distributed``)."""
    with build_lock(Path(cfg.out)) if world().main else contextlib.nullcontext():
        outcome = _run_build(cfg, say)
    barrier()                      # the other ranks wait for rank 0's artifact before they end
    return outcome


def _run_build(cfg: BuildConfig, say: stages.Say) -> BuildOutcome:
    started = time.time()
    inputs = stages.load_inputs(cfg, say)
    clock = WallClock(inputs.cache, started)

    def talk(message: str) -> None:   # every stage line also records the time spent so far
        clock.lap()
        say(message)

    space = stages.plan_space(inputs, talk)
    t = time.monotonic()
    fit = stages.fit_budget(inputs, space, talk)
    fit.seconds = time.monotonic() - t
    if not fit.outcome.fitting:
        return _unreachable(inputs, fit)
    t = time.monotonic()
    tuned = stages.finetune_and_choose(inputs, space, fit.outcome, talk)
    tuned.seconds = time.monotonic() - t
    drop = 100 * (tuned.accuracy.before - tuned.accuracy.final)
    if drop > cfg.search.max_accuracy_drop:
        return _too_lossy(inputs, fit, tuned, drop)
    if not world().main:           # rank 0 alone writes the artifact and times it
        return BuildOutcome(EXIT_OK, "", None)
    with alone():
        return _ship(cfg, inputs, space, fit, tuned, clock, talk)


def _ship(cfg: BuildConfig, inputs: stages.Inputs, space, fit: stages.Fit, tuned, clock: "WallClock",
          talk: stages.Say) -> BuildOutcome:
    """The plan that fits, fine-tuned (and quantized, with int8): its artifact, figures and report, renamed
    into ``<out>/artifact``."""
    int8 = stages.quantize_plan(inputs, space, tuned, talk) if fit.uses_int8 else None
    if int8 is not None and not int8.mixed.met:
        return _int8_too_lossy(inputs, fit, tuned, int8)
    artifact = stages.assemble_artifact(inputs, space, tuned, talk, int8)
    talk("measuring the artifact's top-1 on the held-out images (onnxruntime)")
    accuracy = stages.shipped_accuracy(inputs, space, tuned, artifact, int8)
    update_manifest(artifact.path, "accuracy", {**(artifact.manifest.get("accuracy") or {}), **accuracy.to_dict()})
    latency = stages.before_after(inputs, artifact, talk)
    if not latency.within_budget:  # cannot happen: fit_budget only returns plans whose figure fits
        raise EdgepruneError("internal error: final model exceeds the budget", exit_code=1)
    result = BuildResult(inputs.profile.name, fit.outcome.search, fit.outcome.attempts, tuned.selection,
                         accuracy, latency, inputs.blocks, stages.parameters(inputs.loaded.model),
                         stages.parameters(tuned.model), stages.static_memory(artifact), tuned.finetune,
                         fit.evaluations, search_cost=fit.search_record(), torch=inputs.torch_record(), anchor=fit.anchor_record,
                         stage_s={"search": round(fit.seconds, 1), "finetune": round(tuned.seconds, 1)})
    if fit.int8 is not None:
        result.int8 = {**fit.int8.to_dict(), **(int8.to_dict() if int8 is not None else {}),
                       "sizes": artifact.manifest.get("sizes"),
                       "host_note": host_note(int8.precision, inputs.profile.name) if int8 is not None else None}
    if cfg.measure.verify_arm:
        talk("verifying on the aarch64 onnxruntime under qemu")
        arm = verify_arm(artifact.path, ArmVerifyConfig(device=inputs.profile.name), log=talk)
        result.verify_arm = arm.to_dict()
        if arm.verdict != "pass":
            raise EdgepruneError(f"ARM verification failed: {arm.reason}", exit_code=1)
    result.wall_s, result.wall_runs_s = clock.total(), clock.runs()
    write_report(artifact.path, result, cfg)
    write_text_atomic(artifact.path / "build-config.toml", cfg.to_toml())
    update_manifest(artifact.path, "build", {"config": cfg.flat(), "strategy": result.strategy,
                                             "removed": result.removed, "wall_s": result.wall_s, "torch": result.torch})
    target = replace_folder(artifact.path, Path(cfg.out) / "artifact")
    clock.reset()                  # a finished build: a later rerun times itself afresh
    budget = latency.verdict()
    state = PlanState.from_tokens(result.removed)
    message = (f"budget met without removing anything: {budget}" if not result.removed else
               f"budget met: {budget} after removing {len(result.removed)} blocks" if not state.levers() or
               state.levers() == ["blocks"] else f"budget met: {budget} with {state.describe()}")
    if int8 is not None:
        kept = int8.mixed.chosen.kept_fp32
        message += (", in int8" + (f" ({len(kept)} layers kept in fp32)" if kept else "")
                    + f": {accuracy.shipped:.2%} top-1 on the held-out images (onnxruntime, fp32 file "
                      f"{accuracy.onnx_fp32:.2%})")
    return BuildOutcome(EXIT_OK, message, result, target)


def _int8_too_lossy(inputs: stages.Inputs, fit: stages.Fit, tuned: stages.Tuned, int8) -> BuildOutcome:
    """Mixed precision found no layer set within ``--max-int8-drop`` that fits: nothing ships."""
    mixed, cfg = int8.mixed, inputs.cfg
    result = Unreachable(inputs.profile.name, cfg.search.budget_ms, fit.outcome.search, fit.outcome.attempts,
                         fit.evaluations, search_cost=fit.search_record(), selection=tuned.selection, accuracy=tuned.accuracy, torch=inputs.torch_record(),
                         anchor=fit.anchor_record)
    result.int8 = {**fit.int8.to_dict(), **int8.to_dict()}
    kept = mixed.chosen.kept_fp32
    message = (f"int8 loses {mixed.drop:.2f} points of top-1 on the {mixed.fp32.images} scoring images at best "
               f"({mixed.fp32.top1:.2%} in fp32 -> {mixed.accuracy.top1:.2%}"
               + (f", {len(kept)} layers kept in fp32" if kept else "") + f"), more than --max-int8-drop "
               f"{cfg.search.max_int8_drop:g}" + ("" if len(mixed.steps) < 2 or mixed.steps[-1].fits else
                                                  "; keeping more layers in fp32 breaks the budget")
               + "; nothing shipped (raise --max-int8-drop, or build without int8 in --levers)")
    return BuildOutcome(EXIT_UNREACHABLE, message, result)


def _unreachable(inputs: stages.Inputs, fit: stages.Fit) -> BuildOutcome:
    o, budget, levers = fit.outcome, inputs.cfg.search.budget_ms, inputs.cfg.search.levers
    result = Unreachable(inputs.profile.name, budget, o.search, o.attempts, fit.evaluations, search_cost=fit.search_record(), reach=fit.reach,
                         torch=inputs.torch_record(), anchor=fit.anchor_record)
    floor = result.floor
    if not o.reachable and floor is not None:
        ratio = fit.int8.ratio if fit.uses_int8 and fit.int8 is not None else 1.0
        ms = floor.latency_ms * ratio            # with int8: the float plan's figure times int8's ratio
        over = (f"{ms:.2f} ms predicted" + (f" in int8 ({ratio:.2f}x the float plan)" if ratio != 1.0 else "")
                + f" (+{ms - budget:.2f} ms, {100 * (ms / budget - 1):.0f}% over)"
                + (f" at top-1 {floor.top1:.2%} on the scoring images" if floor.top1 is not None else
                   "; no plan was scored"))
        if levers == ["blocks"]:
            message = (f"budget {budget:g} ms is unreachable by block removal on {inputs.profile.name}: removing all "
                       f"{len(inputs.candidates)} removable blocks gives {over}")
        else:
            message = (f"budget {budget:g} ms is unreachable with {', '.join(levers)} on {inputs.profile.name}: "
                       f"the fastest plan ({PlanState.from_tokens(floor.removed).describe()}) gives {over}")
        message += "".join(f"; {_combo(k, levers)}: {ms:.1f} ms predicted" for k, ms in fit.reach.items()
                           if k != "+".join(levers))
    else:
        message = (f"no plan's final figure met {budget:g} ms after {SEARCH_ATTEMPTS} attempts "
                   f"(closest {o.closest_ms:.2f} ms)")
    return BuildOutcome(EXIT_UNREACHABLE, message, result)


def _combo(key: str, levers: list[str]) -> str:
    """How the unreachable message names a lever combination: ``channels alone``, ``with resolution as well``."""
    parts = key.split("+")
    extra = [p for p in parts if p not in levers]
    return f"with {' and '.join(extra)} as well" if extra else f"{parts[0]} alone"


def _too_lossy(inputs: stages.Inputs, fit: stages.Fit, tuned: stages.Tuned, drop: float) -> BuildOutcome:
    """The accuracy guard: the plan that fits loses more held-out top-1 than allowed; nothing ships."""
    cfg, chosen, acc = inputs.cfg, tuned.selection.chosen, tuned.accuracy
    result = Unreachable(inputs.profile.name, cfg.search.budget_ms, fit.outcome.search, fit.outcome.attempts,
                         fit.evaluations, search_cost=fit.search_record(), selection=tuned.selection, accuracy=acc, torch=inputs.torch_record(),
                         anchor=fit.anchor_record)
    message = (f"the best plan that meets {cfg.search.budget_ms:g} ms ({tuned.selection.label}: "
               f"{PlanState.from_tokens(chosen.removed).describe()}, {chosen.final_ms:.2f} ms) loses {drop:.1f} points of top-1 "
               f"on the {acc.images} held-out images ({acc.before:.2%} -> {acc.final:.2%}), more than "
               f"--max-accuracy-drop {cfg.search.max_accuracy_drop:g}; nothing shipped")
    return BuildOutcome(EXIT_UNREACHABLE, message, result)


class WallClock:
    """Wall time of a build over all the runs it took: an interrupted run's time is kept in the
    cache, so the resumed build reports the total (and each run)."""

    def __init__(self, cache: BuildCache, started: float) -> None:
        self.cache, self.started = cache, started
        self.before = [float(s) for s in (cache.load("wall", valid=wall_runs) or {}).get("runs", [])]
        self.lap()

    def runs(self) -> list[float]:
        return [*self.before, time.time() - self.started]

    def total(self) -> float:
        return sum(self.runs())

    def lap(self) -> None:
        self.cache.save("wall", {"runs": self.runs()})

    def reset(self) -> None:
        self.cache.save("wall", {"runs": []})


LOCK_NAME = ".lock"


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[Path]:
    """Hold ``<out>/.lock`` (an exclusive ``flock``) for the block; a build folder another
    build holds raises :class:`EdgepruneError` at once, naming the holder (pid, start time).
    The lock goes with the process, so a crashed or killed build never leaves it held."""
    if out.exists() and not out.is_dir():
        raise EdgepruneError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)   # not truncated: it names the holder
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise EdgepruneError(f"another build is using {out}: {_holder(path)}; wait for it to finish "
                                 f"or choose another --out") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)     # a released lock names no one
    finally:
        os.close(fd)                # releases the lock; the file stays (removing it would race a newcomer)


def _holder(path: Path) -> str:
    """What the lock file says about the build that holds it (it writes it just after locking)."""
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text:
            return f"held by {text.splitlines()[0]}"
        time.sleep(0.05)
    return "held by a build that has not yet written its pid"
