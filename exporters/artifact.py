"""The artifact folder a firmware team receives: model files, test vectors and ``manifest.json``.

Layout (schema documented in docs/manifest.md)::

    model.onnx                  the simplified, verified ONNX model
    model.ort                   the same model in ORT format (onnxruntime's own converter)
    required_operators.config   operators for a reduced-operator onnxruntime build
    golden.npz                  test vectors: inputs, onnxruntime's reference outputs and, with data,
                                the raw images the inputs were made from (raw_0, raw_1, ...)
    manifest.json               everything else, and the sha256 of every other file

The folder is built in a temporary folder beside the target and renamed into place, so a
failure or an interruption never leaves a partial artifact; an existing folder is replaced
only with ``force`` and only when it is itself an artifact (or empty).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from edgeprune import __version__
from edgeprune.errors import EdgepruneError
from edgeprune.files import naming_disk_errors, read_json, sha256_file, staged_folder, write_json_atomic
from edgeprune.exporters import runtime
from edgeprune.exporters.onnx_facts import count_macs, io_spec, node_module_paths, operator_counts, parameter_count
from edgeprune.exporters.memory import static_memory
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx, model_device
from edgeprune.exporters.ort_format import convert_to_ort
from edgeprune.exporters.quantize import Quantization, calibration_cache, file_sizes, quantize_onnx
from edgeprune.exporters.simplify import simplify_onnx
from edgeprune.exporters.verify import VERIFY_FAILED_EXIT, VerifyConfig, as_numpy, compare, random_inputs, verify_onnx

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MODEL_ONNX, MODEL_ORT, GOLDEN = "model.onnx", "model.ort", "golden.npz"
RESERVED_SECTIONS = ("schema_version", "files")


@dataclass
class ArtifactConfig:
    export: ExportConfig = field(default_factory=ExportConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    simplify: bool = True
    ort_format: bool = True
    golden_count: int = 8          # test vectors in golden.npz
    force: bool = False            # replace an existing artifact folder


@dataclass
class ArtifactResult:
    path: Path
    manifest: dict[str, Any]


# ---------------------------------------------------------------- files and checksums

def _payload_files(folder: Path) -> list[Path]:
    """Every regular file of the artifact except the manifest itself, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not p.name.startswith(f".{MANIFEST}"))


def file_table(folder: str | Path) -> dict[str, dict[str, Any]]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in _payload_files(folder)}


def checksum_problems(folder: str | Path) -> list[str]:
    """Differences between the artifact's files and its manifest's sha256 list (empty = all match)."""
    folder = Path(folder)
    listed = load_manifest(folder).get("files", {})
    problems = []
    present = {p.relative_to(folder).as_posix() for p in _payload_files(folder)}
    for name, entry in listed.items():
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
        elif sha256_file(folder / name) != entry.get("sha256"):
            problems.append(f"{name}: sha256 does not match the manifest")
    problems += [f"{name}: present but not listed in the manifest" for name in sorted(present - set(listed))]
    return problems


def load_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise EdgepruneError(f"{folder} is not an edgeprune artifact: {MANIFEST} not found")
    data = read_json(path, "artifact manifest")
    if not isinstance(data, dict) or "schema_version" not in data:
        raise EdgepruneError(f"{path} is not an edgeprune manifest (no schema_version)")
    return data


def _as_json(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as it reads back from JSON (tuples become lists), or a one-line error."""
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise EdgepruneError(f"the manifest cannot hold this value: {e}") from e


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_manifest(artifact_dir: str | Path, key: str, value: Any) -> dict[str, Any]:
    """Set the top-level section ``key`` of the artifact's manifest to ``value`` (JSON data), and
    refresh the sha256 list for files added since; the manifest is replaced atomically.

    Refuses (EdgepruneError) when a file already listed no longer matches its sha256: a
    changed artifact must not be blessed by a later step. Returns the new manifest.
    """
    folder = Path(artifact_dir)
    if key in RESERVED_SECTIONS:
        raise EdgepruneError(f"the manifest section {key!r} is maintained by edgeprune itself")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EdgepruneError(f"manifest section {key!r} is not JSON data: {e}") from e
    with _locked(folder):
        manifest = load_manifest(folder)
        changed = [p for p in checksum_problems(folder) if "not listed" not in p]
        if changed:
            raise EdgepruneError(f"refusing to update {folder / MANIFEST}: {changed[0]}")
        manifest[key] = value
        manifest["files"] = file_table(folder)
        write_json_atomic(folder / MANIFEST, manifest, strict=True)
    return manifest


# ---------------------------------------------------------------- atomic folder

def _check_target(target: Path, force: bool) -> None:
    """The rule for ``out_dir``: new, or (with ``force``) an existing artifact or empty folder."""
    if not target.exists():
        return
    if not target.is_dir():
        raise EdgepruneError(f"{target} exists and is not a folder")
    if not force:
        raise EdgepruneError(f"{target} already exists; pass --force to replace it")
    if any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise EdgepruneError(f"refusing to replace {target}: it is not an edgeprune artifact (no {MANIFEST})")


# ---------------------------------------------------------------- the artifact

def versions() -> dict[str, str]:
    out = {"edgeprune": __version__, "python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


RAW_PREFIX = "raw_"              # golden.npz: raw_0, raw_1, ... the raw image of each test vector


def _raw_arrays(raw: Sequence[np.ndarray | torch.Tensor], count: int, in_name: str,
                out_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The raw images of the first ``count`` test vectors as ``raw_<i>`` arrays, (H, W, C) each."""
    if len(raw) < count:
        raise EdgepruneError(f"{len(raw)} raw images for {count} test vectors: pass one per image")
    taken = {f"{RAW_PREFIX}{i}": np.ascontiguousarray(as_numpy(r)) for i, r in enumerate(raw[:count])}
    for name, a in taken.items():
        if a.ndim != 3 or a.dtype.kind not in "uif":
            raise EdgepruneError(f"raw image {name} has shape {list(a.shape)} ({a.dtype}); expected (H, W, C) numbers")
    clash = sorted(set(taken) & {in_name, *out_names, "label"})
    if clash:
        raise EdgepruneError(f"the model's input/output name {clash[0]!r} clashes with golden.npz's raw images")
    return taken


def _golden(sess, inputs: np.ndarray, labels: np.ndarray | None, source: str, in_name: str,
            out_names: Sequence[str], vcfg: VerifyConfig,
            raw: Sequence[np.ndarray | torch.Tensor] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    outputs = runtime.run(sess, inputs)
    arrays = {in_name: inputs, **dict(zip(out_names, outputs))}
    if labels is not None:
        arrays["label"] = labels.astype(np.int64)
    raws = _raw_arrays(raw, len(inputs), in_name, out_names) if raw is not None else {}
    arrays.update(raws)
    info = {"file": GOLDEN, "count": int(len(inputs)), "inputs": source,
            "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
            "reference": "outputs of model.onnx in onnxruntime (CPUExecutionProvider)",
            "tolerance": f"|got - reference| <= {vcfg.atol:g} + {vcfg.rtol:g} * max|reference|",
            "raw": ({"arrays": f"{RAW_PREFIX}0 .. {RAW_PREFIX}{len(raws) - 1}", "count": len(raws),
                     "layout": "HWC", "input_of": f"{in_name}[i] is preprocessing.steps applied to {RAW_PREFIX}i",
                     "what": "each test vector's image as decoded from its file (or as stored in the data file), "
                             "before any resize: the first step of preprocessing.steps"}
                    if raws else None)}
    return arrays, info


def build_artifact(model: nn.Module, input_shape: Sequence[int], out_dir: str | Path,
                   config: ArtifactConfig | None = None, *,
                   images: np.ndarray | torch.Tensor | None = None,
                   labels: np.ndarray | torch.Tensor | None = None,
                   raw_images: Sequence[np.ndarray | torch.Tensor] | None = None,
                   preprocess: dict[str, Any] | None = None,
                   classes: Sequence[str] | None = None,
                   source: dict[str, Any] | None = None,
                   accuracy: dict[str, Any] | None = None,
                   quantize: Quantization | None = None,
                   progress: Callable[[str], None] | None = None) -> ArtifactResult:
    """Export, simplify, verify and package ``model`` into the artifact folder ``out_dir``.

    ``images``/``labels``: preprocessed validation images (N, C, H, W) and their labels, for
    verification and test vectors (random inputs when absent). ``raw_images``: the raw image
    (H, W, C, before any resize, as ``preprocess["steps"]`` starts from) of each of ``images``
    in the same order (at least the first ``golden_count``), stored beside the test vectors
    so firmware can check its own preprocessing. ``preprocess``, ``classes``,
    ``source`` and ``accuracy`` are copied into the manifest. ``quantize``: ship the verified float
    model quantized to int8 (onnxruntime static QDQ) instead; the manifest's ``precision`` section
    records how and each layer's precision, ``verification.int8`` the int8 file against the float one,
    and ``sizes`` both files' bytes. Raises EdgepruneError with one
    line on bad input (exit 2) or a failed verification (exit 1); nothing is left behind.
    """
    cfg = config or ArtifactConfig()
    say = progress or (lambda _msg: None)
    shape = [int(s) for s in input_shape]
    x_real = as_numpy(images).astype(np.float32) if images is not None and len(images) else None
    y_real = as_numpy(labels).astype(np.int64) if labels is not None and x_real is not None else None
    if classes is not None and len(classes) == 0:
        classes = None
    if raw_images is not None and x_real is not None and len(raw_images) < min(cfg.golden_count, len(x_real)):
        raise EdgepruneError(f"{len(raw_images)} raw images for {min(cfg.golden_count, len(x_real))} test vectors: "
                             "pass the raw image of each of the first images")

    with staged_folder(out_dir, check=lambda target: _check_target(target, cfg.force)) as stage:
        work = stage / ".work"
        work.mkdir()
        say("exporting to ONNX")
        exported = export_onnx(model, shape, work / "exported.onnx", cfg.export)
        check_inputs = x_real[:cfg.verify.real_images] if x_real is not None else \
            random_inputs(shape, cfg.verify.random_inputs, cfg.verify.seed)
        onnx_path = stage / MODEL_ONNX
        say("simplifying with onnxsim")
        simplified = simplify_onnx(exported.path, onnx_path, check_inputs, cfg.verify.atol,
                                   cfg.verify.rtol, cfg.verify.threads, enabled=cfg.simplify).to_dict()

        say("verifying against PyTorch")
        verification = verify_onnx(model, onnx_path, shape, x_real, y_real, cfg.verify)
        verification.raise_for_failure()
        verified = verification.to_dict()
        verified["torch_device"] = str(cfg.verify.device or model_device(model))
        verified["onnxruntime"] = {"provider": "CPUExecutionProvider", "threads": cfg.verify.threads}
        precision: dict[str, Any] = {"model": "fp32"}
        sizes = {"fp32": file_sizes(onnx_path)}
        if quantize is not None:
            say("quantizing to int8")
            fp32_path = work / "fp32.onnx"
            os.replace(onnx_path, fp32_path)
            cache = (calibration_cache(quantize.cache_folder, fp32_path, quantize.calibration, quantize.config)
                     if quantize.cache_folder is not None else None)
            q = quantize_onnx(fp32_path, onnx_path, quantize.calibration, quantize.config, quantize.precision, cache)
            precision = {"model": "int8" if not q.kept_fp32 else "mixed", **q.to_dict()}
            sizes["int8"] = file_sizes(onnx_path)
            ref = runtime.run(runtime.session(fp32_path, cfg.verify.threads), check_inputs)
            got = runtime.run(runtime.session(onnx_path, cfg.verify.threads), check_inputs)
            int8_cmp = compare(ref, got, cfg.verify.atol, cfg.verify.rtol)
            verified["int8"] = {"against": "the verified float model in onnxruntime, on the same inputs",
                                "inputs": len(check_inputs), "max_abs_diff": int8_cmp.max_abs_diff,
                                "mean_abs_diff": int8_cmp.mean_abs_diff, "top1_agreement": int8_cmp.top1_agreement}
            if y_real is not None and x_real is not None:
                labels_seen = y_real[:len(check_inputs)]
                verified["int8"]["onnx_fp32_top1"] = float(np.mean(ref[0].argmax(axis=1) == labels_seen))
                verified["int8"]["onnx_int8_top1"] = float(np.mean(got[0].argmax(axis=1) == labels_seen))

        sess = runtime.session(onnx_path, cfg.verify.threads)
        in_name = sess.get_inputs()[0].name
        out_names = [o.name for o in sess.get_outputs()]
        n_gold = cfg.golden_count
        if x_real is not None:
            g_in, g_lab, g_src = x_real[:n_gold], (y_real[:n_gold] if y_real is not None else None), \
                "preprocessed validation images"
        else:
            g_in, g_lab, g_src = random_inputs(shape, n_gold, cfg.verify.seed + 1), None, \
                "random standard-normal inputs (no validation images were given)"
        arrays, golden_info = _golden(sess, g_in, g_lab, g_src, in_name, out_names, cfg.verify,
                                      raw_images if x_real is not None else None)
        with naming_disk_errors(stage / GOLDEN):
            np.savez_compressed(stage / GOLDEN, **arrays)

        ort_info = None
        if cfg.ort_format:
            say("converting to ORT format")
            ort = convert_to_ort(onnx_path, stage)
            got = runtime.run(runtime.session(ort.ort_path, cfg.verify.threads), g_in)
            ort_cmp = compare([arrays[n] for n in out_names], got, cfg.verify.atol, cfg.verify.rtol)
            verified["ort_format"] = asdict(ort_cmp)
            if quantize is not None:     # integer kernels round otherwise when fused otherwise: the classes must agree
                verified["ort_format"]["criterion"] = "int8: the same top-1 on every test vector"
                same = ort_cmp.top1_agreement is None or ort_cmp.top1_agreement >= 1.0
                if not same:
                    raise EdgepruneError(f"the ORT format int8 model picks another class than model.onnx on "
                                         f"{1 - ort_cmp.top1_agreement:.0%} of the test vectors (max abs diff "
                                         f"{ort_cmp.max_abs_diff:.3g})", exit_code=VERIFY_FAILED_EXIT)
            elif not ort_cmp.within():
                raise EdgepruneError(f"the ORT format model differs from model.onnx: max abs diff "
                                     f"{ort_cmp.max_abs_diff:.3g} > {ort_cmp.tolerance:.3g}",
                                     exit_code=VERIFY_FAILED_EXIT)
            ort_info = {"file": ort.ort_path.name, "required_operators_file": ort.config_path.name,
                        "required_operators": ort.required_operators, "optimization": ort.optimization}

        say("computing static figures")
        proto = onnx.load(str(onnx_path))
        modules = node_module_paths(proto)
        spec = io_spec(proto, layout="NCHW" if len(shape) == 4 else None)
        acc = dict(accuracy or {})
        if verification.accuracy:
            acc["exported_model"] = verification.accuracy
        src = {"class": f"{type(model).__module__}.{type(model).__qualname__}", **(source or {})}
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "file": MODEL_ONNX,
                **spec,
                "dynamic_batch": cfg.export.dynamic_batch,
                "opset": exported.opset,
                "ir_version": int(proto.ir_version),
                "operators": operator_counts(proto),
                "nodes": len(proto.graph.node),
                "parameters": int(sum(p.numel() for p in model.parameters())),
                "onnx_parameters": parameter_count(proto),
                "macs": count_macs(proto),
                "nodes_with_module_path": len(modules),
            },
            "ort_format": ort_info,
            "preprocessing": preprocess,
            "classes": list(classes) if classes is not None else None,
            "source": src,
            "accuracy": acc or None,
            "export": {"exporter": exported.exporter, "fallback_reason": exported.fallback_reason,
                       "opset": exported.opset, "seconds": exported.seconds,
                       "simplify": simplified},
            "verification": verified,
            "precision": precision,
            "sizes": sizes,
            "memory": static_memory(proto).to_dict(),
            "golden": golden_info,
            "versions": versions(),
        }
        shutil.rmtree(work)
        manifest = _as_json(manifest)
        manifest["files"] = file_table(stage)
        write_json_atomic(stage / MANIFEST, manifest, strict=True)
        final = Path(out_dir).absolute()
    return ArtifactResult(path=final, manifest=manifest)
