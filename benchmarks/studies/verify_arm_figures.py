"""Figures for docs/verify-arm.md: which aarch64 onnxruntime releases run under the emulator,
how long preparing the aarch64 userland takes (cold and warm), and the verify-arm verdicts
for torchvision resnet18 and mobilenet_v2 (random weights, torch.onnx.export dynamo=True)
on the cores of the bundled device profiles.

    nice -n 10 .venv/bin/python benchmarks/studies/verify_arm_figures.py [--versions 1.26.0,1.31.1] [--bundled ARTIFACT]

Prints markdown. No inference is timed: latency under emulation means nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgeprune.devices.arm_emulator import GUEST_PYTHON, describe_exit, find_qemu, no_core_dumps, qemu_facts
from edgeprune.devices.arm_userland import DEFAULT_ORT_VERSION, ArmEnv, prepare_arm_env
from edgeprune.devices.arm_verify import ArmVerifyConfig, verify_arm
from edgeprune.errors import EdgepruneError

VERSIONS = ["1.20.1", "1.21.1", "1.22.1", "1.23.2", "1.24.4", "1.25.1", "1.26.0", "1.27.0",
            "1.28.0", "1.29.0", "1.30.0", "1.31.1"]
DEVICES = ["rpi3", "rpi4", "rpi5", "jetson-nano"]


def export(name: str, folder: Path) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=True,
                      input_names=["input"], output_names=["logits"], external_data=False)
    return path


def imports_without_fix(env: ArmEnv, qemu: Path, cpu: str) -> str:
    """`import onnxruntime` with the host's /proc/cpuinfo showing through (no per-run prefix)."""
    code = f"import sys; sys.path.insert(0, {str(env.site)!r}); import onnxruntime"
    proc = subprocess.run([str(qemu), "-cpu", cpu, "-L", str(env.root), str(env.root) + GUEST_PYTHON,
                           "-I", "-S", "-c", code], capture_output=True, text=True, timeout=600,
                          preexec_fn=no_core_dumps)
    return "imports" if proc.returncode == 0 else describe_exit(proc.returncode, proc.stderr)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--bundled", help="artifact folder of the bundled model, if one exists")
    args = ap.parse_args()
    qemu = find_qemu()
    emulator, _ = qemu_facts(qemu)
    work = Path(tempfile.mkdtemp(prefix="verify-arm-figures-"))
    print(f"emulator: {emulator}\n")
    try:
        resnet18, mobilenet = export("resnet18", work), export("mobilenet_v2", work)

        print("## Preparation of the aarch64 userland (default version)\n")
        print("| run | from cache | seconds |\n|---|---|---|")
        cache = work / "cache"
        for run in ("cold", "warm"):
            env = prepare_arm_env(DEFAULT_ORT_VERSION, cache, str(qemu))
            print(f"| {run} | {env.from_cache} | {env.prepare_s:.2f} |")

        print("\n## onnxruntime releases under the emulator (resnet18, cortex-a72, 1 random input)\n")
        print("| onnxruntime | numpy | cold preparation s | import without cpuinfo fix | verify-arm | max abs diff |")
        print("|---|---|---|---|---|---|")
        for version in [v for v in args.versions.split(",") if v]:
            vcache = cache if version == DEFAULT_ORT_VERSION else work / f"cache-{version}"
            try:
                env = prepare_arm_env(version, vcache, str(qemu))
            except EdgepruneError as e:
                print(f"| {version} | - | - | - | preparation failed: {e} | - |")
                continue
            raw = imports_without_fix(env, qemu, "cortex-a72")
            r = verify_arm(resnet18, ArmVerifyConfig(cpu="cortex-a72", ort_version=version, samples=1,
                                                    cache_dir=vcache))
            prep = "cached" if env.from_cache else f"{env.prepare_s:.1f}"
            print(f"| {version} | {env.numpy_version} | {prep} | {raw} | {r.verdict} | {fmt(r.max_abs_diff)} |")
            if vcache != cache:
                shutil.rmtree(vcache, ignore_errors=True)

        print(f"\n## Verdicts, onnxruntime {DEFAULT_ORT_VERSION}, {args.samples} random inputs each\n")
        print("| model | device | core | verdict | max abs diff | largest abs x86 output | tolerance | "
              "top-1 agreement | core hwcaps |")
        print("|---|---|---|---|---|---|---|---|---|")
        targets = [("resnet18", resnet18), ("mobilenet_v2", mobilenet)]
        if args.bundled:
            targets.append(("bundled artifact", Path(args.bundled)))
        for name, path in targets:
            for device in DEVICES:
                r = verify_arm(path, ArmVerifyConfig(device=device, samples=args.samples, cache_dir=cache,
                                                    write_manifest=False))
                top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement:.0%}"
                print(f"| {name} | {device} | {r.qemu_cpu} | {r.verdict} | {fmt(r.max_abs_diff)} | "
                      f"{fmt(r.max_abs_x86)} | {fmt(r.tolerance)} | {top1} | {' '.join(r.hwcaps)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
