"""fp32 against int8 on the bundled models: accuracy of the artifact, host latency side by side, board
predictions, verify-arm agreement, and the accuracy-latency front with and without the int8 lever.

    OMP_NUM_THREADS=1 python benchmarks/studies/int8_benchmark.py --model default
    OMP_NUM_THREADS=1 python benchmarks/studies/int8_benchmark.py --model mobilenet_v2_fmnist
    python benchmarks/studies/int8_benchmark.py --doc-only

Part 1, per model (unpruned): the float file exported and simplified as the artifact's; quantized with
onnxruntime's static QDQ quantizer (per-channel weights, MinMax on 128 training images) twice, with the
types onnxruntime recommends for this x86 CPU (uint8 activations) and for Arm (int8 activations). Top-1 is
onnxruntime's output of each file on the 10,000 Fashion-MNIST test images; host latency is int8 against
fp32 timed interleaved (``benchmarks.compare``, 1 thread); rpi4 and rpi5 are predicted for the Arm file,
with their bands; verify-arm runs the Arm file's artifact on the emulated A72 and A76.

Part 2 (``--front``): builds at the levers benchmark's fractions of each board's unpruned prediction,
``--levers blocks`` against ``--levers blocks,int8``: the plan, 0.25 epoch of fine-tune (seed 0), the
shipped file's onnxruntime top-1 on the held-out test images and its predicted latency. Results go to
``docs/int8-benchmark-<model>.json`` as they are done (the script resumes); ``docs/int8-benchmark.md`` is
written from them.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from edgeprune.benchmarks.compare import CompareConfig, compare
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.ort_runner import cpu_model
from edgeprune.build import stages
from edgeprune.build.config import BuildConfig
from edgeprune.build.int8 import quantize_chosen
from edgeprune.devices.arm_verify import ArmVerifyConfig, verify_arm
from edgeprune.devices.fingerprint import local
from edgeprune.devices.predictor import predict
from edgeprune.exporters.artifact import ArtifactConfig, build_artifact
from edgeprune.exporters.quantize import Quantization, QuantizeConfig, file_sizes, onnx_accuracy, precision_for
from edgeprune.files import write_json_atomic
from edgeprune.pipeline.data import DataSpec, load_data_for
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.models import ModelSpec, load_model

FRACTIONS = (0.75, 0.5, 0.35)
BOARDS = ("rpi4", "rpi5")
X86 = precision_for(local().machine, local().features)      # this x86 CPU's types
ARM = precision_for("aarch64", ["neon", "dotprod"])


def prediction(path: Path, device: str) -> dict:
    p = predict(path, device)
    return {"ms": p.latency_ms, "low": p.low_ms, "high": p.high_ms, "expected_error": p.expected_error,
            "precision": getattr(p, "precision", None)}


def part_one(model_name: str, data: str, work: Path, say) -> dict:
    loaded = load_model(ModelSpec(model_name))
    bundle = load_data_for(DataSpec(data), loaded)
    x = bundle.preprocess.apply(bundle.x_val).numpy()
    y = bundle.y_val.numpy()
    calib = bundle.preprocess.apply(bundle.x_train[bundle.sample("train", 128)]).numpy()
    out: dict = {"test_images": int(len(y))}
    arts = {}
    for name, precision in (("fp32", None), ("int8-x86", X86), ("int8-arm", ARM)):
        folder = work / name
        q = Quantization(QuantizeConfig(), precision, calib, work) if precision is not None else None
        build_artifact(loaded.model, loaded.input_shape, folder, ArtifactConfig(force=True),
                       images=torch.from_numpy(x[:256]), labels=torch.from_numpy(y[:256]), quantize=q)
        arts[name] = folder / "model.onnx"
        acc = onnx_accuracy(arts[name], [(x, y)])
        out[name] = {"top1": acc.top1, "loss": acc.loss, **file_sizes(arts[name])}
        say(f"{model_name} {name}: top-1 {acc.top1:.4f}, {out[name]['bytes']:,} B")
    bench = BenchConfig(threads=1, providers=["CPUExecutionProvider"], warmup=10, runs=50, device="host")
    for name in ("int8-x86", "int8-arm"):
        c = compare(arts[name], arts["fp32"], bench, CompareConfig(rounds=20, max_rounds=20))
        out[name]["host"] = {"ratio": c.ratio, "ci": [c.ci_low, c.ci_high], "int8_ms": c.a_ms, "fp32_ms": c.b_ms,
                             "rounds": c.rounds}
        say(f"{model_name} {name} host: {c.ratio:.3f}x of fp32 ({c.a_ms:.3f} vs {c.b_ms:.3f} ms)")
    for board in BOARDS:
        out["fp32"][board] = prediction(arts["fp32"], board)
        out["int8-arm"][board] = prediction(arts["int8-arm"], board)
    for board in BOARDS:
        r = verify_arm(work / "int8-arm", ArmVerifyConfig(device=board, samples=8))
        out["int8-arm"][f"verify_arm_{board}"] = {"verdict": r.verdict, "core": r.qemu_cpu,
                                                 "top1_agreement": r.top1_agreement, "max_abs_diff": r.max_abs_diff,
                                                 "max_abs_x86": r.max_abs_x86}
        say(f"{model_name} verify-arm {board}: {r.verdict}, agreement {r.top1_agreement}, diff {r.max_abs_diff:.3g}")
    return out


def front(model_name: str, data: str, work: Path, results: dict, save, say) -> None:
    """Blocks against blocks+int8 at fractions of each board's unpruned prediction."""
    for board in BOARDS:
        for frac in FRACTIONS:
            for levers in ("blocks", "blocks,int8"):
                key = f"{board}/{frac}/{levers}"
                if key in results["front"]:
                    continue
                t0 = time.time()
                cfg = BuildConfig.from_flags({"model": model_name, "data": data, "levers": [levers],
                                              "shortlist": 1, "device": board, "budget": "1000ms",
                                              "out": str(work / f"build-{board}")})
                inputs = stages.load_inputs(cfg, say)
                space = stages.plan_space(inputs, say)
                base = stages.judge(inputs, stages.cached_onnx(inputs.cache, inputs.cache.path("original", suffix=".onnx"),
                                                               lambda: inputs.loaded.model.cpu().eval(),
                                                               inputs.loaded.input_shape)).value_ms
                budget = frac * base
                inputs.cfg = BuildConfig.from_flags({**cfg.flat(), "budget": f"{budget:.4f}ms", "levers": [levers]})
                fit = stages.fit_budget(inputs, space, say)
                entry: dict = {"budget_ms": budget, "int8": fit.int8.to_dict() if fit.int8 else None}
                if not fit.outcome.fitting:
                    entry["unreachable"] = True
                else:
                    chosen = fit.outcome.fitting[0]
                    model = space.model_for(chosen.removed, torch.device("cpu"))
                    bundle = inputs.bundle
                    ft = FinetuneConfig(epochs=0.25, seed=0)
                    finetune(model, lambda ep: bundle.batches("train", ft.batch_size, shuffle=True, seed=ep),
                             len(bundle.y_train), ft, progress=None)
                    final = inputs.held.final
                    x = bundle.preprocess.apply(bundle.x_val[final]).numpy()
                    y = bundle.y_val[final].numpy()
                    with tempfile.TemporaryDirectory(dir=work) as tmp:
                        art = build_artifact(model.eval(), inputs.loaded.input_shape, Path(tmp) / "a", ArtifactConfig())
                        fp32 = art.path / "model.onnx"
                        shipped = fp32
                        if fit.uses_int8:
                            ch = quantize_chosen(inputs, space, chosen.removed, fp32,
                                                 lambda p: stages.judge(inputs, p).value_ms <= budget, say)
                            shipped = ch.mixed.chosen.path
                            entry["kept_fp32"] = ch.mixed.chosen.kept_fp32
                            entry["int8_drop_scoring"] = ch.mixed.drop
                        entry.update(blocks_removed=len(chosen.removed), ms=stages.judge(inputs, shipped).value_ms,
                                     top1=onnx_accuracy(shipped, [(x, y)]).top1,
                                     fp32_top1=onnx_accuracy(fp32, [(x, y)]).top1,
                                     held_out=int(len(y)))
                entry["wall_s"] = time.time() - t0
                results["front"][key] = entry
                save()
                say(f"{key}: {entry}")


def write_doc(files: list[Path], doc: Path) -> None:
    lines = ["# INT8 benchmark: fp32 against int8 on the bundled models", "",
             "Written by `benchmarks/studies/int8_benchmark.py` from "
             + ", ".join(f"`{f}`" for f in files) + ". onnxruntime static QDQ quantization, per-channel int8 "
             "weights, MinMax calibration on 128 training images; *int8-x86* has uint8 activations (onnxruntime's "
             "choice for x86 with VNNI), *int8-arm* int8 activations (its choice for Arm). Top-1 is onnxruntime's "
             "output of each file; host latency is timed interleaved against the fp32 file (median of 20 rounds' "
             "ratios, 95% interval), 1 thread; board figures are predictions (no board was at hand).", ""]
    for f in files:
        r = json.loads(f.read_text())
        one = r.get("part1")
        lines += [f"## {r['model']}", "", f"On {r['cpu']}, onnxruntime {r['onnxruntime']}, {r['date']}.", ""]
        if one:
            fp = one["fp32"]
            lines += [f"| file | top-1 ({one['test_images']} test images) | bytes | gzip bytes | host int8/fp32 | "
                      "rpi4 predicted | rpi5 predicted |", "|---|---:|---:|---:|---|---|---|"]
            for name in ("fp32", "int8-x86", "int8-arm"):
                e = one[name]
                h = e.get("host")
                host = f"{h['ratio']:.3f}x ({h['ci'][0]:.3f}-{h['ci'][1]:.3f}; {h['int8_ms']:.3f} vs {h['fp32_ms']:.3f} ms)" \
                    if h else "-"
                boards = [f"{e[b]['ms']:.2f} ms ({e[b]['low']:.2f}-{e[b]['high']:.2f})" if b in e else "-" for b in BOARDS]
                lines.append(f"| {name} | {e['top1']:.2%} ({100 * (e['top1'] - fp['top1']):+.2f}) | {e['bytes']:,} | "
                             f"{e['gzip_bytes']:,} | {host} | {boards[0]} | {boards[1]} |")
            va = [(b, one["int8-arm"].get(f"verify_arm_{b}")) for b in BOARDS]
            lines += ["", "verify-arm of the int8-arm artifact (8 golden test images, aarch64 onnxruntime under qemu): "
                      + "; ".join(f"{b} ({v['core']}): {v['verdict']}, top-1 agreement {v['top1_agreement']:.0%}, "
                                  f"max |diff| {v['max_abs_diff']:.3g} of max |x86| {v['max_abs_x86']:.3g}"
                                  for b, v in va if v) + ".", ""]
        if r.get("front"):
            lines += ["Front: `--levers blocks` against `--levers blocks,int8`, budgets at fractions of the board's "
                      "unpruned prediction; one fine-tune of 0.25 epoch (seed 0); top-1 of the shipped file on the "
                      "held-out test images (onnxruntime); ms is the board's prediction of the shipped file.", "",
                      "| board | budget | levers | int8 taken | blocks removed | ms | top-1 | fp32 file top-1 |",
                      "|---|---|---|---|---:|---:|---:|---:|"]
            for key, e in r["front"].items():
                board, frac, levers = key.split("/")
                taken = "-" if e.get("int8") is None else ("yes" if e["int8"]["taken"] else
                                                           f"no ({e['int8']['ratio']:.2f}x)")
                if e.get("unreachable"):
                    lines.append(f"| {board} | {float(frac):.0%} ({e['budget_ms']:.2f} ms) | {levers} | {taken} | "
                                 "unreachable | | | |")
                    continue
                lines.append(f"| {board} | {float(frac):.0%} ({e['budget_ms']:.2f} ms) | {levers} | {taken} | "
                             f"{e['blocks_removed']} | {e['ms']:.2f} | {e['top1']:.2%} | {e['fp32_top1']:.2%} |")
            lines.append("")
        if r.get("notes"):       # the reading, written by hand into the JSON (kept when the script resumes)
            lines += ["Reading:", "", *[f"- {n}" for n in r["notes"]], ""]
    doc.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--front", action="store_true", help="also the builds with and without int8")
    ap.add_argument("--workdir", default="runs/int8")
    ap.add_argument("--doc", default="docs/int8-benchmark.md")
    ap.add_argument("--doc-only", action="store_true")
    args = ap.parse_args()
    files = lambda: sorted(Path("docs").glob("int8-benchmark-*.json"))   # noqa: E731
    if args.doc_only:
        write_doc(files(), Path(args.doc))
        return
    torch.set_num_threads(1)
    work = Path(args.workdir) / args.model
    work.mkdir(parents=True, exist_ok=True)
    path = Path(f"docs/int8-benchmark-{args.model}.json")
    results = json.loads(path.read_text()) if path.exists() else {"front": {}}
    import onnxruntime as ort
    results.update(model=args.model, cpu=cpu_model(), onnxruntime=ort.__version__, machine=platform.machine(),
                   date=time.strftime("%Y-%m-%d"))
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)   # noqa: E731
    save = lambda: write_json_atomic(path, results, indent=1)   # noqa: E731
    if "part1" not in results:
        results["part1"] = part_one(args.model, args.data, work, say)
        save()
    if args.front:
        front(args.model, args.data, work, results, save, say)
    write_doc(files(), Path(args.doc))
    say("done")


if __name__ == "__main__":
    main()
