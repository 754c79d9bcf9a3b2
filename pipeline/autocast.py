"""Mixed precision of the torch work (scoring, fine-tuning, evaluation): ``--autocast``, resolved once.

``--autocast auto`` (the default) is bfloat16 on a CUDA device that runs it natively, else float16,
and off on a CPU (CPU autocast does not speed these convolutions up). ``bf16`` may be asked for on a
CPU too (``torch.autocast("cpu")`` runs it; that is how the tests exercise the path without a GPU);
``fp16`` only on CUDA. :func:`resolve_autocast` turns the choice and the device into an
:class:`Autocast`: the dtype used (None: float32) and why, which the build records and keys its cache by.

Forward passes run under ``torch.autocast``; what is added up from them (correct counts, losses) is
computed from float32 logits. A float16 fine-tune scales its loss (``torch.amp.GradScaler``: float16
gradients underflow); bfloat16 has float32's range and needs none. The weights stay float32 throughout
(autocast casts per operation), and an ONNX export never runs under autocast
(``exporters/onnx_export.py`` turns it off), so the exported file is the float32 model's.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from edgeprune.errors import EdgepruneError

AUTOCAST_CHOICES = ("auto", "off", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Autocast:
    """The precision the torch work runs in: ``dtype`` (bf16 or fp16) under ``torch.autocast``, or None
    for plain float32; ``choice`` is what ``--autocast`` asked for, ``reason`` why it resolved so."""

    dtype: str | None = None
    choice: str = "off"
    reason: str = "--autocast off"

    @property
    def used(self) -> str:
        """bf16, fp16, or fp32 (autocast off)."""
        return self.dtype or "fp32"

    def __call__(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for ``device``'s type at this dtype; nothing when off."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=DTYPES[self.dtype])

    def scaler(self, device: torch.device | str) -> torch.amp.GradScaler:
        """The fine-tune's loss scaler: on for float16, a pass-through otherwise."""
        return torch.amp.GradScaler(torch.device(device).type, enabled=self.dtype == "fp16")

    def to_dict(self) -> dict:
        return {**asdict(self), "used": self.used}

    def record(self, device: torch.device | str) -> dict:
        """Where the torch work ran and in what precision (a report, JSON or record carries it)."""
        return {"device": str(device), "autocast": self.to_dict()}


OFF = Autocast()


def check_autocast(choice: str, accelerator: torch.device | str) -> None:
    """Refuse in one line an ``--autocast`` that is not a choice, or fp16 on a CPU (``accelerator``:
    the ``--accelerator`` text or the torch device; only whether it is a CPU matters here)."""
    if choice not in AUTOCAST_CHOICES:
        raise EdgepruneError(f"--autocast must be one of {', '.join(AUTOCAST_CHOICES)}, got {choice!r}")
    if choice == "fp16" and not str(accelerator).strip().lower().startswith("cuda"):
        raise EdgepruneError("--autocast fp16 needs --accelerator cuda: float16 autocast does not help on a CPU; "
                             "use bf16, auto or off there")


def resolve_autocast(choice: str, device: torch.device | str) -> Autocast:
    """The precision ``--autocast choice`` gives on ``device`` (a device :func:`resolve_device` accepted), and why."""
    device = torch.device(device)
    check_autocast(choice, device)
    if choice == "off":
        return Autocast(None, choice, "--autocast off")
    if device.type != "cuda":
        if choice == "auto":
            return Autocast(None, choice, "auto is off on a CPU: autocast does not speed these convolutions up there")
        return Autocast("bf16", choice, "--autocast bf16 on a CPU")
    with torch.cuda.device(device):
        name, bf16 = torch.cuda.get_device_name(), torch.cuda.is_bf16_supported(including_emulation=False)
    if choice == "auto":
        return (Autocast("bf16", choice, f"auto: {name} runs bfloat16 natively") if bf16 else
                Autocast("fp16", choice, f"auto: {name} lacks native bfloat16, so fp16 with loss scaling"))
    if choice == "bf16" and not bf16:
        raise EdgepruneError(f"--autocast bf16: {name} does not run bfloat16 natively; use fp16 or auto")
    return Autocast(choice, choice, f"--autocast {choice} on {name}"
                    + (" (with loss scaling in the fine-tune)" if choice == "fp16" else ""))
