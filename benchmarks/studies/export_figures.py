"""Export figures for docs/export.md: onnxsim node counts and verification of three models.

Run: nice -n 10 .venv/bin/python benchmarks/studies/export_figures.py [--out docs/export.md] [--resnet56-weights CKPT]

Models: the bundled ResNet-56 (its trained weights when they are installed, else random
weights), torchvision resnet18 and mobilenet_v2 (random weights, 64x64 input, 10 classes).
Random-weight models get random BatchNorm statistics first: at torchvision's initialisation
mobilenet_v2's logits are ~1e-10, which would make any output comparison vacuous.
Verification uses real images: the first 256 of the bundled Fashion-MNIST validation subset,
padded/resized and channel-replicated as ``edgeprune export`` does.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import ArtifactConfig, build_artifact, versions
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.simplify import simplify_onnx
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.models import ModelSpec, load_model, randomize_batchnorm


def models(resnet56_weights: str | None) -> list[tuple[str, nn.Module, tuple[int, ...], str]]:
    torch.manual_seed(0)
    out = []
    try:
        loaded = load_model(ModelSpec("default"))
        out.append(("bundled ResNet-56", loaded.model, loaded.input_shape, "bundled trained weights"))
    except EdgepruneError:
        if resnet56_weights:
            loaded = load_model(ModelSpec("cifar_resnet56", weights=resnet56_weights))
            epoch = torch.load(resnet56_weights, map_location="cpu", weights_only=True).get("epoch", "?")
            out.append(("bundled ResNet-56", loaded.model, loaded.input_shape,
                        f"training checkpoint (epoch {epoch}; bundled weights not installed yet)"))
        else:
            loaded = load_model(ModelSpec("cifar_resnet56"))
            out.append(("bundled ResNet-56", randomize_batchnorm(loaded.model), loaded.input_shape,
                        "random weights + random BN (bundled weights not installed yet)"))
    for name in ("resnet18", "mobilenet_v2"):
        loaded = load_model(ModelSpec(name, num_classes=10, input_size=64))
        out.append((name, randomize_batchnorm(loaded.model), loaded.input_shape, "random weights + random BN, 64x64"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/export.md")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--resnet56-weights", help="ResNet-56 state_dict/checkpoint to use while the bundled "
                    "weights are not installed")
    args = ap.parse_args()
    rows_sim, rows_ver, rows_mem = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape, weights in models(args.resnet56_weights):
            bundle = load_data(DataSpec("default", channels=shape[1]), shape, 10)
            x, y = bundle.val_images(args.images), bundle.val_labels(args.images)
            t = time.perf_counter()
            res = build_artifact(model, shape, Path(tmp) / name, ArtifactConfig(), images=x, labels=y,
                                 preprocess=bundle.preprocess.to_dict(), classes=bundle.classes)
            wall = time.perf_counter() - t
            m = res.manifest
            s = m["export"]["simplify"]
            # the same model through the TorchScript exporter, for comparison
            ts = export_onnx(model, shape, Path(tmp) / f"{name}_ts.onnx", ExportConfig(dynamo=False))
            ts_s = simplify_onnx(ts.path, Path(tmp) / f"{name}_ts_sim.onnx", x[:16].numpy())
            rows_sim.append(f"| {name} | {s['nodes_before']} | {s['nodes_after']} | {'kept' if s['applied'] else s['reason']} "
                            f"| {ts_s.nodes_before} | {ts_s.nodes_after} | {s['nodes_with_module_metadata']}/{s['nodes_after']} |")
            v = m["verification"]
            r, real, o = v["random"], v["real"], v["ort_format"]
            acc = m["accuracy"]["exported_model"]
            rows_ver.append(f"| {name} | {weights} | {r['max_abs_diff']:.2e} | {real['max_abs_diff']:.2e} "
                            f"| {real['max_abs_reference']:.3g} | {real['tolerance']:.2e} | {real['top1_agreement']:.2%} "
                            f"| {acc['torch_top1']:.2%} / {acc['onnx_top1']:.2%} | {o['max_abs_diff']:.2e} "
                            f"| {'pass' if v['passed'] else 'FAIL'} | {wall:.1f} |")
            mem, mod = m["memory"], m["model"]
            rows_mem.append(f"| {name} | {list(shape)} | {mod['parameters']:,} | {mod['onnx_parameters']:,} | {mod['macs']:,} "
                            f"| {mem['weight_bytes']:,} | {mem['peak_activation_bytes']:,} | {m['files']['model.onnx']['bytes']:,} "
                            f"| {m['files']['model.ort']['bytes']:,} | {', '.join(m['ort_format']['required_operators'])} |")
            print(rows_sim[-1], rows_ver[-1], rows_mem[-1], sep="\n", flush=True)
    ver = versions()
    cmd_extra = f" --resnet56-weights {args.resnet56_weights}" if args.resnet56_weights else ""
    text = f"""# Export: onnxsim and verification figures

Produced by `nice -n 10 .venv/bin/python benchmarks/studies/export_figures.py{cmd_extra}` on {platform.machine()} with
torch {ver['torch']}, onnx {ver['onnx']}, onnxruntime {ver['onnxruntime']}, onnxsim {ver['onnxsim']},
onnxscript {ver['onnxscript']}; opset 18, static batch 1, onnxruntime CPU provider, 1 thread.
Real images: the first {args.images} images of the bundled Fashion-MNIST validation subset, preprocessed
as `edgeprune export` does (padded to 32x32 for ResNet-56; resized to 64x64 and replicated to 3
channels for the torchvision models). Random-weight models get random BatchNorm statistics
(at torchvision's initialisation mobilenet_v2's logits are about 1e-10, which would make the
comparison vacuous).

## Node counts before and after onnxsim

The dynamo exporter (torch's default, used by edgeprune) already runs onnxscript's optimiser,
which folds BatchNorm into Conv and removes constants; onnxsim finds nothing left to remove.
The TorchScript exporter's graph, shown for comparison, is where onnxsim earns its keep.
onnxsim drops node metadata; edgeprune copies it back by node name (last column).

| model | dynamo: nodes | after onnxsim | onnxsim graph | TorchScript: nodes | after onnxsim | nodes with module path |
|---|---|---|---|---|---|---|
{chr(10).join(rows_sim)}

## Verification: ONNX (onnxruntime) against PyTorch

Max absolute difference over all logits; tolerance = 1e-4 + 1e-4 x max|PyTorch logit|;
top-1 agreement and accuracy on the real images; `.ort` vs `.onnx` on the 8 golden vectors.

| model | weights | random: max abs diff | real: max abs diff | max abs logit | tolerance | top-1 agreement | top-1 PyTorch / ONNX | .ort vs .onnx | verdict | artifact wall s |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows_ver)}

## Static figures (from ONNX shape inference)

| model | input | PyTorch params | ONNX params | MACs | weight bytes | peak activation bytes | model.onnx bytes | model.ort bytes | required operators |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows_mem)}

Peak activation = the largest sum of live tensors over the graph's own topological order
(no in-place reuse); see docs/manifest.md.
"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
