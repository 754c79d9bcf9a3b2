"""Measure a model on a real device over SSH, with the system ``ssh``/``scp``.

Nothing of edgeprune is installed on the device: the model and the self-contained
``benchmarks/ort_runner.py`` (python3 + numpy + onnxruntime) are copied to a temporary
folder there, run with the profile's providers and threads, and the folder is removed.
Using the system binaries means the user's ``~/.ssh/config``, keys and agent apply.
An interrupted measurement (Ctrl-C, SIGTERM, --ssh-timeout) also stops the runner there: each
runner records its pid in the folder and ``exec``s, and the cleanup kills that pid before it
removes the folder (ssh without a terminal does not pass a hang-up on to the remote process).

:func:`resolve_ssh` says whether and where to go: ``--ssh`` first, else the device
profile's ``ssh`` line (``edgeprune.devices.targets.resolve_target`` builds on it to decide,
for every command, where a figure comes from). :func:`bench_over_ssh` is ``edgeprune bench`` on
the device: latency in one runner process, then (optionally) peak memory in fresh runner
processes, exactly as on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.latency import BenchConfig, to_result
from edgeprune.benchmarks.memory import STABLE_MALLOC_ENV, MemoryResult, memory_result, probe_args
from edgeprune.benchmarks.modelfile import inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.devices.address import SshTarget, parse_target
from edgeprune.devices.profiles import DeviceProfile, load_profile
from edgeprune.errors import EdgepruneError

SSH_TIMEOUT_S = 900.0     # default of --ssh-timeout: the longest a remote benchmark may run
RUNNER_PID = "runner.pid"  # in the device's temporary folder: the pid of the runner now running

__all__ = ["SshConfig", "SshTarget", "bench_over_ssh", "copy_to", "measure_over_ssh", "parse_target",
           "remote_workdir", "resolve_ssh", "run_ssh", "runner_script", "ssh_error",
           "time_models_over_ssh"]

# -- running things on the device -------------------------------------------------------

def runner_script() -> Path:
    """The ``ort_runner.py`` that is shipped to the device, byte for byte."""
    return Path(ort_runner.__file__).resolve()


@dataclass
class SshConfig:
    """How to reach a device; everything else comes from the user's ssh configuration."""

    target: SshTarget
    python: str = "python3"            # interpreter on the device
    connect_timeout_s: int = 10
    timeout_s: float = SSH_TIMEOUT_S   # for each remote command (the whole benchmark; --ssh-timeout)
    options: tuple[str, ...] = ()      # extra ssh/scp options, e.g. ("-F", "/path/config")
    ssh_bin: str = "ssh"
    scp_bin: str = "scp"

    def common(self) -> list[str]:
        return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", *self.options]


def resolve_ssh(ssh: str | None, profile: DeviceProfile | str | None = None, *,
                remote_python: str | None = None,
                ssh_config: str | os.PathLike[str] | None = None,
                timeout_s: float | None = None) -> SshConfig | None:
    """Where a command measures: ``--ssh`` if given, else the profile's ``ssh`` line.

    ``profile`` is a loaded profile or a name/path to load. Returns None when neither
    names a device (measure here); ``--remote-python``/``--ssh-config`` without a target
    are then bad input rather than silently ignored.
    """
    if isinstance(profile, str):
        profile = load_profile(profile)
    target = ssh or (profile.ssh if profile is not None else None)
    if not target:
        given = [flag for flag, v in (("--remote-python", remote_python),
                                      ("--ssh-config", ssh_config)) if v]
        if given:
            where = f"the profile '{profile.name}' has no ssh line" if profile else "no --device"
            raise EdgepruneError(f"{given[0]} needs a device to reach: pass --ssh user@host[:port] "
                                 f"({where})")
        return None
    options: tuple[str, ...] = ()
    if ssh_config is not None:
        if not Path(ssh_config).is_file():
            raise EdgepruneError(f"--ssh-config file not found: {ssh_config}")
        options = ("-F", str(ssh_config))
    python = remote_python or (profile.python if profile is not None else "python3")
    if timeout_s is not None and timeout_s <= 0:
        raise EdgepruneError(f"--ssh-timeout must be positive, got {timeout_s:g}")
    return SshConfig(parse_target(target), python=python, options=options, timeout_s=timeout_s or SSH_TIMEOUT_S)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")]
    return lines[-1] if lines else ""


def ssh_error(cfg: SshConfig, stderr: str, what: str) -> EdgepruneError:
    """One clear line for an ssh/scp failure (exit status 255 or an scp error)."""
    t = str(cfg.target)
    low = stderr.lower()
    if "connection refused" in low:
        msg = f"cannot reach {t}: connection refused (is sshd running, is the port right?)"
    elif "permission denied" in low or "too many authentication failures" in low:
        msg = (f"cannot log in to {t}: authentication failed (publickey/agent; edgeprune uses "
               "BatchMode, so a key or agent must work without a password prompt)")
    elif "timed out" in low:
        msg = f"cannot reach {t}: connection timed out after {cfg.connect_timeout_s}s"
    elif "could not resolve hostname" in low or "name or service not known" in low:
        msg = f"cannot reach {t}: unknown host name"
    elif "no route to host" in low or "network is unreachable" in low:
        msg = f"cannot reach {t}: no route to host"
    elif "host key verification failed" in low:
        msg = f"cannot log in to {t}: host key verification failed (add the device to known_hosts)"
    else:
        msg = f"ssh to {t} failed while {what}: {_first_line(stderr) or 'no message'}"
    return EdgepruneError(msg)


def run_ssh(cfg: SshConfig, command: str, what: str, timeout_s: float | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``command`` on the device; ssh's own failures become one-line errors."""
    args = [cfg.ssh_bin, *cfg.common()]
    if cfg.target.port:
        args += ["-p", str(cfg.target.port)]
    args += [cfg.target.destination, command]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout_s or cfg.timeout_s)
    except FileNotFoundError:
        raise EdgepruneError(f"'{cfg.ssh_bin}' not found: install an OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"{what} on {cfg.target} took longer than {timeout_s or cfg.timeout_s:.0f}s; stopped: "
                             f"check that '{cfg.python}' runs there (ssh {cfg.target.destination} {cfg.python} -c "
                             "'import onnxruntime') and that the board is idle, or raise --ssh-timeout") from None
    if proc.returncode == 255:
        raise ssh_error(cfg, proc.stderr, what)
    return proc


def copy_to(cfg: SshConfig, files: Sequence[Path], remote_dir: str) -> None:
    args = [cfg.scp_bin, "-q", *cfg.common()]
    if cfg.target.port:
        args += ["-P", str(cfg.target.port)]
    args += [str(f) for f in files] + [f"{cfg.target.scp_host}:{remote_dir}/"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=cfg.timeout_s)
    except FileNotFoundError:
        raise EdgepruneError(f"'{cfg.scp_bin}' not found: install an OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"copying the model to {cfg.target} took longer than "
                             f"{cfg.timeout_s:.0f}s; stopped") from None
    if proc.returncode != 0:
        raise ssh_error(cfg, proc.stderr, "copying the model")


_PROBE = ("import sys; import onnxruntime, numpy; "
          "print(onnxruntime.__version__, sys.version.split()[0])")


@contextlib.contextmanager
def remote_workdir(cfg: SshConfig) -> Iterator[str]:
    """A temporary folder on the device whose python has numpy and onnxruntime; removed after.

    When the body ends with an exception (Ctrl-C, SIGTERM through the CLI, a timeout), the runner
    whose pid is in the folder's ``runner.pid`` is stopped first.
    """
    py = shlex.quote(cfg.python)
    # the folder's name is chosen here (mkdir fails on a name that exists, as mktemp's would), so an
    # interruption during this first call can still remove it
    remote_dir = f"/tmp/edgeprune.{secrets.token_hex(6)}"
    probe = f"mkdir -m 700 {remote_dir} && {py} -c {shlex.quote(_PROBE)} && echo {remote_dir}"
    try:
        _probe(cfg, probe, remote_dir)
    except BaseException:                  # a failed, timed-out or interrupted probe leaves no folder
        with _ignoring_sigint(), contextlib.suppress(EdgepruneError):   # (empty yet: rmdir takes nothing else)
            run_ssh(cfg, f"rmdir {remote_dir} 2>/dev/null; true", "cleaning up", timeout_s=60)
        raise
    try:
        yield remote_dir
    except BaseException:
        _clean_up(cfg, remote_dir, stop_runner=True)   # interrupted, timed out or failed: it may still run
        raise
    _clean_up(cfg, remote_dir, stop_runner=False)      # finished: its pid may already be someone else's


def _probe(cfg: SshConfig, probe: str, remote_dir: str) -> None:
    """Run the device check; a missing python or numpy/onnxruntime is one line saying what to do."""
    proc = run_ssh(cfg, probe, "checking the device", timeout_s=cfg.connect_timeout_s + 60)
    if proc.returncode != 0:
        err = proc.stderr
        m = re.search(r"No module named '?([A-Za-z0-9_.]+)", err)
        if m:
            missing = m.group(1).split(".")[0]
            raise EdgepruneError(
                f"{cfg.target} has no {missing} for {cfg.python}; install it there "
                f"('{cfg.python} -m pip install onnxruntime numpy') or pass --remote-python")
        if proc.returncode == 127 or "not found" in err:
            raise EdgepruneError(f"{cfg.target} has no '{cfg.python}'; pass --remote-python "
                                 "with the device's python3 path")
        raise EdgepruneError(f"checking {cfg.target} failed: {_first_line(err) or 'exit ' + str(proc.returncode)}")
    lines = proc.stdout.strip().splitlines()
    if not lines or lines[-1].strip() != remote_dir:
        raise EdgepruneError(f"could not create a temporary folder on {cfg.target}")


def _clean_up(cfg: SshConfig, remote_dir: str, stop_runner: bool) -> None:
    """Remove the folder on the device; with ``stop_runner``, first stop the runner whose pid it holds
    (SIGTERM, then SIGKILL after a second if it is still there). A second Ctrl-C while this runs is
    ignored: the cleanup is bounded by its own 60 s timeout."""
    rdir = shlex.quote(remote_dir)
    command = f"rm -rf {rdir}"
    if stop_runner:
        pid_file = shlex.quote(f"{remote_dir}/{RUNNER_PID}")
        command = (f'if [ -f {pid_file} ]; then p="$(cat {pid_file})"; kill -TERM "$p" 2>/dev/null; '
                   'for i in 1 2 3 4 5; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done; '
                   f'kill -KILL "$p" 2>/dev/null; fi; {command}')
    with _ignoring_sigint():
        try:
            run_ssh(cfg, command, "cleaning up", timeout_s=60)
        except EdgepruneError:
            pass


@contextlib.contextmanager
def _ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored in the block (main thread only: elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _model_files(model: Path) -> list[Path]:
    info = inspect_model(model)
    return [model] + [model.parent / loc for loc in info.external_files]


def _runner_args(model_name: str, threads: int, providers: Sequence[str], warmup: int,
                 runs: int | None, time_budget_s: float | None,
                 shapes: dict[str, list[int]] | None, profile: bool = False, top: int = 10,
                 seed: int = 0) -> list[str]:
    args = [model_name, "--threads", str(threads), "--providers", ",".join(providers),
            "--warmup", str(warmup), "--seed", str(seed)]
    if runs is not None:
        args += ["--runs", str(runs)]
    if time_budget_s is not None:
        args += ["--time-budget", str(time_budget_s)]
    for name, dims in (shapes or {}).items():
        args += ["--shape", f"{name}={'x'.join(str(d) for d in dims)}"]
    if profile:
        args += ["--profile", "--top", str(top)]
    return args


def _runner_command(cfg: SshConfig, rdir: str, runs: Sequence[Sequence[str]], env: str = "") -> str:
    """Run the runner in ``rdir`` once per argument list, one after the other while they succeed.

    Each run writes its shell's pid to ``runner.pid`` and ``exec``s the runner, so the pid is the
    runner's and :func:`remote_workdir` can stop it when the measurement is interrupted.
    """
    execs = [f"echo $$ > {RUNNER_PID} && exec {env}{shlex.quote(cfg.python)} ort_runner.py "
             + " ".join(shlex.quote(a) for a in args) for args in runs]
    body = execs[0] if len(execs) == 1 else " && ".join(f"sh -c {shlex.quote(e)}" for e in execs)
    return f"cd {shlex.quote(rdir)} && {body}"


def _parse_runner_output(cfg: SshConfig, proc: subprocess.CompletedProcess) -> list[dict[str, Any]]:
    if proc.returncode != 0:
        line = _first_line(proc.stderr)
        line = line[len("error: "):] if line.startswith("error: ") else line
        if "No module named" in proc.stderr:
            raise EdgepruneError(f"{cfg.target}: {line}; install onnxruntime and numpy for {cfg.python}")
        raise EdgepruneError(f"benchmark on {cfg.target} failed: {line or 'exit ' + str(proc.returncode)}")
    out = []
    for ln in proc.stdout.splitlines():
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    if not out:
        raise EdgepruneError(f"benchmark on {cfg.target} printed no result")
    return out


def bench_over_ssh(model: str | Path, cfg: SshConfig, bench: BenchConfig,
                   device: str | None = None, memory_repeats: int = 0,
                   memory_runs: int = 10) -> tuple[LatencyResult, MemoryResult | None]:
    """``edgeprune bench`` on the device: its latency, and its peak memory if asked.

    One temporary folder on the device holds the model, its external data and
    ``ort_runner.py``. Latency comes from one runner process with ``bench``'s threads,
    providers, warm-up, runs, time budget, shapes, seed and ``--profile``; with
    ``memory_repeats`` > 0, memory comes from ``2 * memory_repeats`` fresh runner processes
    (arena on, then off), like :func:`edgeprune.benchmarks.memory.measure_memory` here.
    Both carry ``source="measured:ssh:<device>"`` (``device`` defaults to ``bench.device``,
    then the target).
    """
    bench.validate()
    if memory_repeats < 0:
        raise EdgepruneError(f"memory repeats must be 0 or more, got {memory_repeats}")
    model = Path(model)
    info = inspect_model(model)
    files = [model] + [model.parent / loc for loc in info.external_files]
    source = f"measured:ssh:{device or bench.device or cfg.target}"
    probes: list[dict[str, Any]] = []
    with remote_workdir(cfg) as rdir:
        copy_to(cfg, [runner_script(), *files], rdir)
        args = _runner_args(model.name, bench.threads, bench.providers, bench.warmup, bench.runs,
                            bench.time_budget_s, bench.shapes, bench.profile, bench.top, bench.seed)
        proc = run_ssh(cfg, _runner_command(cfg, rdir, [args]), "running the benchmark")
        raw = _parse_runner_output(cfg, proc)[-1]
        if memory_repeats:
            env = "env PYTHONDONTWRITEBYTECODE=1 " + "".join(
                f"{k}={shlex.quote(v)} " for k, v in STABLE_MALLOC_ENV.items())
            cmd = _runner_command(cfg, rdir, [probe_args(model.name, bench, arena, memory_runs)
                                              for _ in range(memory_repeats) for arena in (True, False)], env)
            proc = run_ssh(cfg, cmd, "measuring memory")
            probes = [r for r in _parse_runner_output(cfg, proc) if r.get("mode") == "memory"]
            if len(probes) != 2 * memory_repeats:
                raise EdgepruneError(f"memory measurement on {cfg.target} returned {len(probes)} "
                                     f"of {2 * memory_repeats} results")
    raw["model"] = str(model)
    result = to_result(raw, source=source)
    result.extra["ssh"] = str(cfg.target)
    result.extra["remote_python"] = cfg.python
    memory = memory_result(info, bench, probes, source=source) if probes else None
    return result, memory


def measure_over_ssh(model: str | Path, cfg: SshConfig, device: str, threads: int,
                     providers: Sequence[str], warmup: int = 10, runs: int | None = 100,
                     time_budget_s: float | None = None,
                     shapes: dict[str, list[int]] | None = None) -> LatencyResult:
    """Copy ``model`` (and its external data) and ``ort_runner.py`` to the device, time it there.

    Returns the same :class:`LatencyResult` as ``edgeprune bench``, with
    ``source="measured:ssh:<device>"``.
    """
    bench = BenchConfig(threads=threads, providers=list(providers), warmup=warmup, runs=runs,
                        time_budget_s=time_budget_s, shapes=dict(shapes or {}), device=device)
    return bench_over_ssh(model, cfg, bench, device)[0]


def time_models_over_ssh(models: Sequence[Path], cfg: SshConfig, threads: int,
                         providers: Sequence[str], warmup: int = 5, runs: int = 30,
                         progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time several models in one session on the device (calibration); raw runner JSON each."""
    files: list[Path] = []
    for m in models:
        files += _model_files(Path(m))
    results: list[dict[str, Any]] = []
    with remote_workdir(cfg) as rdir:
        copy_to(cfg, [runner_script(), *files], rdir)
        for m in models:
            if progress:
                progress(Path(m).name)
            args = _runner_args(Path(m).name, threads, providers, warmup, runs, None, None)
            cmd = _runner_command(cfg, rdir, [args])
            results.append(_parse_runner_output(cfg, run_ssh(cfg, cmd, f"timing {Path(m).name}"))[-1])
    return results
