"""Verify an ONNX model on the aarch64 build of onnxruntime, emulated on the board's core.

The firmware team runs the artifact with the aarch64 onnxruntime wheel, whose kernels
differ from the x86 build the pipeline used. :func:`verify_arm` runs that wheel under qemu
user-mode emulation (``qemu-aarch64-static -cpu cortex-a72`` for a Raspberry Pi 4, ...), so
an instruction the real core lacks fails here as it would on the board, and compares its
outputs with the host's x86 onnxruntime on the same inputs: an artifact's golden vectors,
or seeded random inputs for a bare ``.onnx``. Given an artifact, the result becomes the
manifest's ``verify_arm`` section.

The pieces, each in its own module (see docs/verify-arm.md):

* ``arm_cores``: the board's core (``--cpu`` or the device profile) and the
  ``/proc/cpuinfo`` the guest is shown for it;
* ``arm_userland``: preparing and caching Debian's arm64 Python and PyPI's aarch64 wheels
  per onnxruntime version;
* ``arm_emulator``: finding qemu and running the worker (``arm_verify_worker.py``) under it;
* ``exporters.output_diff``: the output comparison (shared with the exporter's checks).

Nothing here measures time of inference: latency under emulation means nothing.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.devices.arm_cores import wanted_core
from edgeprune.devices.arm_emulator import find_qemu, qemu_facts, run_on_arm
from edgeprune.devices.arm_userland import DEFAULT_ORT_VERSION, Log, check_version, prepare_arm_env
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.output_diff import Comparison, compare_outputs
from edgeprune.files import load_onnx, sha256_file

__all__ = ["DEFAULT_ORT_VERSION", "DEFAULT_DEVICE", "ArmVerifyConfig", "ArmVerifyResult", "verify_arm",
           "InputSpec", "model_inputs", "random_feeds", "golden_feeds", "run_on_host"]

DEFAULT_DEVICE = "rpi4"


def _quiet(_: str) -> None:
    pass


# -- configuration and result ---------------------------------------------------------

@dataclass
class ArmVerifyConfig:
    device: str | None = None         # device profile name or .toml path; gives the core (rpi4
                                      # when neither device nor cpu is given)
    cpu: str | None = None            # qemu -cpu model; overrides the profile's core
    ort_version: str = DEFAULT_ORT_VERSION
    samples: int = 8                  # inputs run on both sides (golden vectors or random)
    seed: int = 0                     # for random inputs
    atol: float = 1e-4                # pass if max |arm - x86| <= atol + rtol * max |x86|, per output
    rtol: float = 1e-4
    min_top1_agreement: float = 1.0   # fraction of rows whose arg-max must agree
    int8_rtol: float = 0.05           # an int8 model: integer kernels round per instruction set, so the outputs
                                      # may differ by this share of max |x86| (top-1 must still agree)
    threads: int = 1                  # intra-op threads on the emulated side
    qemu: str | None = None           # emulator binary; default qemu-aarch64-static on PATH
    cache_dir: Path | None = None     # default $XDG_CACHE_HOME/edgeprune/arm
    timeout_s: float = 1800.0         # for the emulated run
    write_manifest: bool = True       # add a verify_arm section to an artifact's manifest


@dataclass
class ArmVerifyResult:
    verdict: str                      # "pass" or "fail"
    reason: str
    model: str
    artifact: str | None
    device: str | None
    qemu_cpu: str
    emulator: str
    onnxruntime_aarch64: str
    onnxruntime_x86: str
    numpy_aarch64: str
    inputs: str                       # where the inputs came from, in words
    samples: int
    threads: int                      # intra-op threads on each side (CPU execution provider)
    max_abs_diff: float | None
    tolerance: float | None
    max_abs_x86: float | None         # largest |output| on x86, to read the difference against
    top1_agreement: float | None
    outputs: dict[str, dict[str, Any]]
    hwcaps: list[str]                 # features the emulated core advertises (AT_HWCAP)
    model_sha256: str
    env_path: str
    env_from_cache: bool
    env_prepare_s: float              # preparing (or finding) the aarch64 userland; not a model latency
    manifest_updated: bool = False
    checked_at: str = ""
    precision: str = "fp32"           # of the model: fp32, or int8 (it holds QuantizeLinear nodes)
    criterion: str = ""               # what passing meant for it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_section(self) -> dict[str, Any]:
        """What goes in the artifact's manifest: the verdict and its evidence, no host paths."""
        d = self.to_dict()
        for key in ("artifact", "model", "env_path", "env_from_cache", "env_prepare_s", "manifest_updated"):
            d.pop(key)
        return d


# -- inputs ---------------------------------------------------------------------------------

@dataclass
class InputSpec:
    name: str
    shape: list[int | None]           # None for a symbolic dimension
    dtype: np.dtype


def model_inputs(model: Path) -> list[InputSpec]:
    from onnx.helper import tensor_dtype_to_np_dtype

    proto = load_onnx(model, load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise EdgepruneError(f"input '{inp.name}' of {model} is not a tensor; verify-arm handles tensor inputs")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        specs.append(InputSpec(inp.name, dims, np.dtype(tensor_dtype_to_np_dtype(t.elem_type))))
    if not specs:
        raise EdgepruneError(f"{model} has no inputs to feed")
    return specs


def random_feeds(specs: list[InputSpec], samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for s in specs:
            if any(d is None for d in s.shape[1:]):
                raise EdgepruneError(f"input '{s.name}' has a symbolic dimension besides the batch: "
                                     "verify an artifact with golden.npz instead")
            shape = [1 if d is None else d for d in s.shape]
            if np.issubdtype(s.dtype, np.floating):
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
            elif s.dtype == np.bool_:
                feed[s.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[s.name] = rng.integers(0, 10, shape).astype(s.dtype)
        feeds.append(feed)
    return feeds


def _golden_array(data: Any, spec: InputSpec, single: bool) -> np.ndarray | None:
    names = [spec.name, f"inputs/{spec.name}", f"input/{spec.name}"]
    if single:
        names += ["input", "inputs", "x", "images"]
    for key in names:
        if key in data.files:
            return data[key]
    return None


def golden_feeds(path: Path, specs: list[InputSpec], samples: int) -> list[dict[str, np.ndarray]]:
    """Up to ``samples`` model-sized feeds cut from the artifact's golden test vectors.

    An input is found under its own name (or ``inputs/<name>``; for a one-input model also
    ``input``, ``inputs``, ``x`` or ``images``) as an array of stacked samples whose first
    dimension is cut into the model's batch size.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EdgepruneError(f"{path} is not a readable .npz of test vectors: {e}") from None
    with data:
        arrays = {}
        for s in specs:
            try:
                arr = _golden_array(data, s, len(specs) == 1)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:     # a member cut short
                raise EdgepruneError(f"{path} is damaged: {type(e).__name__}: {e}") from None
            if arr is None:
                raise EdgepruneError(f"{path} has no array for model input '{s.name}' (it holds: {', '.join(data.files)})")
            if arr.ndim != len(s.shape) or any(d is not None and d != a for d, a in zip(s.shape[1:], arr.shape[1:])):
                raise EdgepruneError(f"{path}: '{s.name}' has shape {list(arr.shape)}, the model takes {s.shape}")
            arrays[s.name] = arr.astype(s.dtype, copy=False)
    batch = {s.name: s.shape[0] or 1 for s in specs}
    count = min(arrays[s.name].shape[0] // batch[s.name] for s in specs)
    if count == 0:
        raise EdgepruneError(f"{path} holds fewer test vectors than one model batch")
    return [{n: a[i * batch[n]:(i + 1) * batch[n]] for n, a in arrays.items()} for i in range(min(count, samples))]


# -- the x86 side and the comparison ------------------------------------------------------------

def run_on_host(model: Path, feeds: list[dict[str, np.ndarray]], threads: int = 1) -> list[dict[str, np.ndarray]]:
    """The same feeds through the host's (x86) onnxruntime, CPU execution provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise EdgepruneError(f"onnxruntime cannot load {model}: {str(e).splitlines()[0][:300]}") from None
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


def _output_figures(cmp: Comparison) -> dict[str, dict[str, Any]]:
    """Per-output figures as the verify_arm section records them: the scale is ``max_abs_x86``."""
    out = {}
    for name, f in cmp.outputs.items():
        if "equal" in f:           # not numbers: compared for equality
            out[name] = {"shape": f["shape"], "equal": f["equal"]}
        else:
            out[name] = {"shape": f["shape"], "max_abs_diff": f["max_abs_diff"], "tolerance": f["tolerance"],
                         "max_abs_x86": f["max_abs_reference"]}
    return out


def _resolve_target(path: Path) -> tuple[Path, Path | None]:
    """(model.onnx, artifact folder or None) for an artifact folder or a bare .onnx file."""
    if path.is_dir():
        model = path / "model.onnx"
        if not model.is_file():
            raise EdgepruneError(f"{path} is not an artifact folder: it has no model.onnx")
        return model, path
    if not path.exists():
        raise EdgepruneError(f"no such file or folder: {path}")
    if path.suffix != ".onnx":
        raise EdgepruneError(f"{path}: give an artifact folder or an .onnx model")
    return path, None


# -- the whole check ------------------------------------------------------------------------

def verify_arm(model_or_artifact: str | Path, config: ArmVerifyConfig | None = None,
               log: Log = _quiet) -> ArmVerifyResult:
    """Run the model on the emulated board's aarch64 onnxruntime and compare with x86.

    Bad input or a missing emulator raises :class:`EdgepruneError`; a model that crashes,
    errs or disagrees on the emulated core gives ``verdict == "fail"``. Given an artifact
    folder, the result is recorded as the manifest's ``verify_arm`` section.
    """
    cfg = config or ArmVerifyConfig()
    if cfg.samples < 1:
        raise EdgepruneError(f"--samples must be at least 1, got {cfg.samples}")
    if cfg.threads < 1:
        raise EdgepruneError(f"threads must be at least 1, got {cfg.threads}")
    check_version(cfg.ort_version)
    model, artifact = _resolve_target(Path(model_or_artifact))
    device = cfg.device or (None if cfg.cpu else DEFAULT_DEVICE)
    cpu = wanted_core(device, cfg.cpu)
    qemu = find_qemu(cfg.qemu)
    emulator, known = qemu_facts(qemu)
    if cpu not in known:
        raise EdgepruneError(f"this qemu cannot emulate '{cpu}'; it knows: {', '.join(known)}")
    specs = model_inputs(model)
    golden = artifact / "golden.npz" if artifact else None
    if golden is not None and golden.is_file():
        feeds = golden_feeds(golden, specs, cfg.samples)
        described = "golden.npz (preprocessed validation images)"
    else:
        feeds = random_feeds(specs, cfg.samples, cfg.seed)
        described = f"random normal inputs, seed {cfg.seed}"
    quantized = any(n.op_type in ("QuantizeLinear", "QLinearConv", "DynamicQuantizeLinear")
                    for n in load_onnx(model, load_external_data=False).graph.node)
    rtol = max(cfg.rtol, cfg.int8_rtol) if quantized else cfg.rtol
    criterion = (f"max |aarch64 - x86| <= {cfg.atol:g} + {rtol:g} * max |x86| per output"
                 + (" (int8: integer kernels round per instruction set)" if quantized else "")
                 + f", top-1 agreement >= {cfg.min_top1_agreement:g}")
    x86 = run_on_host(model, feeds, cfg.threads)
    env = prepare_arm_env(cfg.ort_version, cfg.cache_dir, str(qemu), log)
    log(f"running {model.name} on aarch64 onnxruntime {env.ort_version} emulated on {cpu} ({len(feeds)} input(s))")
    arm = run_on_arm(env, qemu, cpu, model, feeds, cfg.threads, cfg.timeout_s)
    if arm.ok:
        cmp = compare_outputs(x86, arm.outputs, cfg.atol, rtol, cfg.min_top1_agreement, sides=("x86", "aarch64"))
    else:
        cmp = Comparison(0, None, None, None, None, None,
                         failures=[f"the aarch64 onnxruntime failed on {cpu}: {arm.error}"])
    import onnxruntime as ort

    result = ArmVerifyResult(
        verdict="pass" if cmp.within() else "fail", reason=cmp.reason, model=str(model),
        artifact=str(artifact) if artifact else None, device=device, qemu_cpu=cpu, emulator=emulator,
        onnxruntime_aarch64=env.ort_version, onnxruntime_x86=ort.__version__, numpy_aarch64=env.numpy_version,
        inputs=described, samples=len(feeds), threads=cfg.threads,
        max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance, max_abs_x86=cmp.max_abs_reference,
        top1_agreement=cmp.top1_agreement, outputs=_output_figures(cmp), hwcaps=arm.info.get("hwcaps", []),
        model_sha256=sha256_file(model), env_path=str(env.path),
        env_from_cache=env.from_cache, env_prepare_s=env.prepare_s,
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        precision="int8" if quantized else "fp32", criterion=criterion)
    if artifact is not None and cfg.write_manifest and (artifact / "manifest.json").is_file():
        from edgeprune.exporters.artifact import update_manifest

        update_manifest(artifact, "verify_arm", result.manifest_section())
        result.manifest_updated = True
    return result
