"""Run an ONNX model with the aarch64 onnxruntime; executed *inside* qemu-aarch64.

This file is shipped to the emulated aarch64 Python as it is, so it imports only the
standard library, numpy and onnxruntime (never edgeprune). ``edgeprune.devices.arm_emulator``
(``run_on_arm``) writes a job folder and starts::

    qemu-aarch64-static -cpu CORE -L ROOT ROOT/usr/bin/python3.11 -I -S arm_verify_worker.py JOB_DIR

``JOB_DIR/job.json`` names the model, the site folder holding the aarch64 wheels and the
inputs file; the worker writes ``outputs.npz`` (arrays keyed ``<sample>/<output name>``)
and ``result.json`` (versions, the emulated CPU's hwcaps, or the error). It never times
anything: latency under emulation means nothing.
"""

import json
import os
import platform
import struct
import sys
import traceback

# Bit names of AT_HWCAP and AT_HWCAP2 on arm64 Linux (arch/arm64/include/uapi/asm/hwcap.h).
HWCAP = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
         "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
         "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
         "paca", "pacg"]
HWCAP2 = ["dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
          "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng",
          "bti", "mte"]
AT_HWCAP, AT_HWCAP2 = 16, 26


def hwcaps():
    """CPU features the (emulated) kernel advertises to this process, from its auxv."""
    try:
        with open("/proc/self/auxv", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    aux = dict(struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]))
    names = [n for i, n in enumerate(HWCAP) if aux.get(AT_HWCAP, 0) >> i & 1]
    names += [n for i, n in enumerate(HWCAP2) if aux.get(AT_HWCAP2, 0) >> i & 1]
    return names


def main(job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    result = {"machine": platform.machine(), "python": platform.python_version(), "hwcaps": hwcaps()}
    try:
        sys.path.insert(0, job["site"])
        import numpy as np
        import onnxruntime as ort

        result.update(numpy=np.__version__, onnxruntime=ort.__version__)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(job.get("threads", 1))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(job["model"], so, providers=["CPUExecutionProvider"])
        result["providers"] = sess.get_providers()
        out_names = [o.name for o in sess.get_outputs()]
        outputs = {}
        with np.load(os.path.join(job_dir, job["inputs"]), allow_pickle=False) as data:
            for i in range(int(job["samples"])):
                feed = {name: data[f"{i}/{name}"] for name in job["input_names"]}
                for name, value in zip(out_names, sess.run(out_names, feed)):
                    outputs[f"{i}/{name}"] = value
        np.savez(os.path.join(job_dir, "outputs.npz"), **outputs)
        result["ok"] = True
    except Exception as e:  # reported to the host as data, never as a traceback
        result.update(ok=False, error=f"{type(e).__name__}: {e}".strip(),
                      traceback=traceback.format_exc(limit=4))
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
