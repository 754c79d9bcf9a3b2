"""The 224-px build on a GPU against the CPU: search and fine-tune time, and what shipped.

    python benchmarks/studies/gpu_build.py                      # on a machine with CUDA: cpu, cuda, cuda+bf16
    python benchmarks/studies/gpu_build.py --modes cpu          # the CPU row alone

Each mode runs ``edgeprune build`` in a fresh process and a fresh build folder on the same ImageFolder of
photos (Fashion-MNIST test images upscaled to 160-320 px RGB, ``build_224.make_folder``) with torchvision's
MobileNetV2 at 224 px (random weights, 10 classes: the timing is the point, the accuracy is not), the default
levers and joint search, to a 30 ms rpi4 budget, with a one-epoch fine-tune of the short list:

* ``cpu``: ``--accelerator cpu``;
* ``cuda``: ``--accelerator cuda --autocast off`` (float32 on the GPU);
* ``cuda-bf16``: ``--accelerator cuda --autocast bf16``.

From each build's JSON it reports the wall time, the search's and the fine-tunes' wall time (``stage_s``), the
search's cost (``search_cost``) and the torch record (device, precision), and writes
``--out`` (JSON) and a table on stdout. A mode that fails (no CUDA, an error) is recorded with its one-line
message, so the script is safe to run anywhere; a GPU row is only written where a GPU ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_224 import make_folder  # noqa: E402  (a sibling study script)

ROOT = Path(__file__).resolve().parents[2]
MODES = {"cpu": ["--accelerator", "cpu"], "cuda": ["--accelerator", "cuda", "--autocast", "off"],
         "cuda-bf16": ["--accelerator", "cuda", "--autocast", "bf16"]}
def run(mode: str, data: Path, work: Path) -> dict:
    out = work / mode
    cmd = [sys.executable, "-m", "edgeprune", "build", "--model", "mobilenet_v2", "--num-classes", "10",
           "--data", str(data), "--device", "rpi4", "--budget", "30ms", "--finetune-epochs", "1",
           "--max-accuracy-drop", "100", "--out", str(out), "--json", *MODES[mode]]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "EDGEPRUNE_PROGRESS": "0"})
    wall = time.time() - t
    try:
        summary = json.loads(p.stdout)
    except json.JSONDecodeError:
        lines = p.stderr.strip().splitlines()
        return {"mode": mode, "exit_code": p.returncode, "wall_s": wall, "message": lines[-1] if lines else ""}
    return {"mode": mode, "exit_code": p.returncode, "wall_s": wall, "message": summary.get("message"),
            "torch": summary.get("torch"), "search_cost": summary.get("search_cost"),
            "removed": summary.get("removed"), "accuracy": summary.get("accuracy"),
            "search_s": (summary.get("stage_s") or {}).get("search"),
            "finetune_s": (summary.get("stage_s") or {}).get("finetune")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--per-class", type=int, default=70)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "gpu_build")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_build" / "results.json")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = make_folder(args.workdir / "photos", args.per_class)
    rows = [run(mode, data, args.workdir) for mode in args.modes.split(",")]
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"{'mode':10s} {'exit':>4s} {'wall s':>8s} {'search s':>9s} {'fine-tune s':>12s}  message")
    for r in rows:
        search, tune = (r.get(k) if r.get(k) is not None else float("nan") for k in ("search_s", "finetune_s"))
        print(f"{r['mode']:10s} {r['exit_code']:>4d} {r['wall_s']:>8.0f} {search:>9.0f} {tune:>12.0f}  {r.get('message')}")


if __name__ == "__main__":
    main()
