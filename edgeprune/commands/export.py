"""``edgeprune export``: export, simplify, verify and package a model as an artifact folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.cli_util import console, err_console, print_json, user_errors, warn
from edgeprune.build.int8 import target_precision
from edgeprune.devices.predictor import HOST
from edgeprune.devices.profiles import load_profile
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import ArtifactConfig, build_artifact
from edgeprune.exporters.onnx_export import ExportConfig
from edgeprune.exporters.quantize import Quantization, QuantizeConfig
from edgeprune.exporters.verify import VerifyConfig
from edgeprune.pipeline.data import load_data_for
from edgeprune.pipeline.evaluate import resolve_device
from edgeprune.pipeline.models import load_model

ORDER = 50
DEFAULT_OPSET = 18


def resolve_opset(opset: int | None, device: str | None) -> tuple[int, str]:
    """The opset to export at and where it came from: the flag, the device profile, or the default."""
    if opset is not None:
        return opset, "--opset"
    if device is not None:

        prof = load_profile(device)
        if getattr(prof, "opset", None):
            return int(prof.opset), f"device profile {prof.name}"
        return DEFAULT_OPSET, f"default (device profile {prof.name} names no opset)"
    return DEFAULT_OPSET, "default"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _summary(m: dict[str, Any], path: Path) -> Table:
    t = Table(title=f"artifact {path}", show_header=False, title_justify="left")
    ex, simp, ver, mem, model = m["export"], m["export"]["simplify"], m["verification"], m["memory"], m["model"]
    t.add_row("exporter", ex["exporter"] + (f" (fallback: {ex['fallback_reason']})" if ex["fallback_reason"] else ""))
    t.add_row("opset", str(model["opset"]))
    t.add_row("input", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in model["inputs"]))
    t.add_row("output", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in model["outputs"]))
    t.add_row("onnxsim", f"{simp['nodes_before']} -> {simp.get('nodes_simplified') or simp['nodes_before']} nodes, "
              + ("kept" if simp["applied"] else f"not kept: {simp['reason']}"))
    t.add_row("parameters / MACs", f"{model['parameters']:,} / {model['macs']:,}")
    r = ver["random"]
    t.add_row("vs PyTorch, random", f"max |diff| {r['max_abs_diff']:.2e} (tol {r['tolerance']:.1e}), n={r['n']}")
    if ver.get("real"):
        v = ver["real"]
        t.add_row("vs PyTorch, real", f"max |diff| {v['max_abs_diff']:.2e} (tol {v['tolerance']:.1e}), "
                  f"top-1 agreement {v['top1_agreement']:.2%}, n={v['n']}")
    if ver.get("ort_format"):
        t.add_row(".ort vs .onnx", f"max |diff| {ver['ort_format']['max_abs_diff']:.2e}")
    acc = (m.get("accuracy") or {}).get("exported_model")
    if acc:
        t.add_row("top-1 (exported, val)", f"{acc['onnx_top1']:.2%} on {acc['n']} images (PyTorch {acc['torch_top1']:.2%})")
    q = m.get("precision") or {}
    if q.get("model", "fp32") != "fp32":
        v, sz = ver["int8"], m["sizes"]
        t.add_row("precision", f"{q['model']}: {q['int8_layers']} layers int8 ({q['activations']} activations, "
                  f"{q['weights']} weights, {q['method']} calibration on {q['calibration_images']} images)")
        t.add_row("int8 vs fp32 (onnxruntime)", f"max |diff| {v['max_abs_diff']:.2e}, top-1 agreement "
                  f"{v['top1_agreement']:.2%}" + (f", top-1 {v['onnx_int8_top1']:.2%} (fp32 {v['onnx_fp32_top1']:.2%})"
                                                    if "onnx_int8_top1" in v else "") + f", n={v['inputs']}")
        t.add_row("model.onnx size", f"{sz['fp32']['bytes']:,} B -> {sz['int8']['bytes']:,} B (gzip "
                  f"{sz['fp32']['gzip_bytes']:,} -> {sz['int8']['gzip_bytes']:,} B)")
    t.add_row("weights / peak activations", f"{_mib(mem['weight_bytes'])} / {_mib(mem['peak_activation_bytes'])}")
    t.add_row("files", ", ".join(f"{k} ({v['bytes']:,} B)" for k, v in m["files"].items()))
    return t


@user_errors
def export_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    trust_code: o.TrustCode = False,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="Validation data for verification, test vectors, preprocessing and labels "
        "(default: the bundled data for --model default, none otherwise: random inputs only).")] = None,
    mean: o.Mean = None, std: o.Std = None, channels: o.Channels = None, resize: o.Resize = "auto",
    data_load: o.DataLoad = "auto", data_workers: o.DataWorkers = None,
    force: o.Force = False,
    opset: Annotated[Optional[int], typer.Option(help=f"ONNX opset (default: the device profile's, else {DEFAULT_OPSET}).")] = None,
    device: o.Device = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension (default: static batch 1).")] = False,
    val_images: Annotated[int, typer.Option(help="Real validation images to verify on.")] = 256,
    atol: o.Atol = 1e-4,
    rtol: o.Rtol = 1e-4,
    min_agreement: Annotated[float, typer.Option(help="Minimum top-1 agreement on real images (0-1).")] = 0.99,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="Ship the model quantized to int8 (onnxruntime static QDQ, "
                                       "per-channel weights; types for --device's CPU, else this machine's), "
                                       "calibrated on training images of --data.")] = False,
    int8_calibration: Annotated[str, typer.Option(help="With --int8: minmax, entropy or percentile.")] = "minmax",
    calibration_images: Annotated[int, typer.Option(help="With --int8: training images to calibrate on.")] = 128,
    accelerator: o.Accelerator = "cpu",
    json_out: o.Json = False,
) -> None:
    """Export a model to ONNX, simplify, verify, and write an artifact folder with manifest.json.

    Outputs are compared with PyTorch's (--atol, --rtol); --device gives the profile's opset.
    """

    if not 0 <= min_agreement <= 1:
        raise EdgepruneError(f"--min-agreement is a fraction between 0 and 1, got {min_agreement}")
    if atol < 0 or rtol < 0:
        raise EdgepruneError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    if val_images < 0:
        raise EdgepruneError(f"--val-images must be >= 0, got {val_images}")
    qcfg = QuantizeConfig(method=int8_calibration, calibration_images=calibration_images) if int8 else None
    chosen_opset, opset_from = resolve_opset(opset, device)
    dev = resolve_device(accelerator)
    loaded = load_model(o.model_spec(model, weights, num_classes, in_channels, input_size, trust_checkpoint,
                                      trust_code))
    data = data if data is not None else ("default" if model == "default" else None)
    images = labels = preprocess = raw = None
    quantize = None
    classes = loaded.classes
    if int8 and data is None:
        raise EdgepruneError("--int8 calibrates on training images: give --data")
    if data is not None:
        bundle = load_data_for(o.data_spec(data, mean, std, channels, resize, data_load, data_workers), loaded, warn)
        images, labels = bundle.val_images(val_images), bundle.val_labels(val_images)
        raw = bundle.raw_images("val", range(min(val_images, ArtifactConfig().golden_count)))
        preprocess = {**bundle.preprocess.to_dict(), "data": data}
        classes = classes or bundle.classes
        if qcfg is not None:
            calib = bundle.preprocess.apply(bundle.x_train[bundle.sample("train", qcfg.calibration_images)]).numpy()
            quantize = Quantization(qcfg, target_precision(load_profile(device or HOST)), calib)
    cfg = ArtifactConfig(
        export=ExportConfig(opset=chosen_opset, dynamic_batch=dynamic_batch),
        verify=VerifyConfig(atol=atol, rtol=rtol, min_top1_agreement=min_agreement,
                            real_images=val_images, device=str(dev)),
        simplify=simplify, force=force,
    )
    source = {**loaded.source, "opset_from": opset_from}
    # a prune record may know the accuracy before and after pruning
    accuracy = source.get("accuracy") if isinstance(source.get("accuracy"), dict) else None
    what = dict(images=images, labels=labels, raw_images=raw, preprocess=preprocess, classes=classes, source=source,
                accuracy=accuracy, quantize=quantize)
    if json_out:
        print_json(build_artifact(loaded.model.to(dev), loaded.input_shape, out, cfg, **what).manifest)
        return
    with err_console.status("exporting") as status:
        result = build_artifact(loaded.model.to(dev), loaded.input_shape, out, cfg, **what,
                                progress=lambda msg: status.update(msg))
    console.print(_summary(result.manifest, result.path))
    scale = result.manifest["verification"]["random"]["max_abs_reference"]
    if scale < 1e-6:
        console.print(f"note: the model's outputs are near zero (max |output| {scale:.1e} on random inputs), "
                      "so the comparison with PyTorch says little; are the weights trained?", style="yellow")
    if images is None:
        console.print("note: no --data given; verified on random inputs only, and the manifest has no "
                      "preprocessing or accuracy", style="yellow")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
