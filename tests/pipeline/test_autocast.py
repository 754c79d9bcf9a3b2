"""--autocast: resolved once per device (auto: off on CPUs, bf16 or fp16 on CUDA), refused in one line where it
cannot run; under bf16 on the CPU evaluation, scoring and a fine-tune really run in bfloat16 and land close to
float32; float16's loss scaling runs and is checkpointed; on a CUDA device (skipped without one) the same with auto."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.autocast import OFF, Autocast, check_autocast, resolve_autocast
from edgeprune.pipeline.blocks import discover
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.importance import ScoreContext, candidates_for, removal_accuracy
from edgeprune.pipeline.resnet_cifar import CifarResNet

runner = CliRunner()
CPU = torch.device("cpu")
BF16 = resolve_autocast("bf16", CPU)
TINY_EVAL = ["eval", "--model", "cifar_resnet20", "--data", "default", "--limit", "64", "--json"]
pytestmark = pytest.mark.usefixtures("one_thread")


def resnet8():
    torch.manual_seed(0)
    return CifarResNet(8, 2, 1)            # the smallest CIFAR ResNet keeps the tests fast


def data(n: int = 128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long()


def batches(x, y, size: int = 32):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


class Dtypes:
    """The dtypes of a module's outputs while attached (what autocast really ran it in)."""

    def __init__(self, module: nn.Module) -> None:
        self.seen: set[torch.dtype] = set()
        self.hook = module.register_forward_hook(lambda _m, _i, out: self.seen.add(out.dtype))

    def __enter__(self) -> "Dtypes":
        return self

    def __exit__(self, *_exc) -> None:
        self.hook.remove()


# ---------------------------------------------------------------- resolving the choice

def test_auto_is_off_on_a_cpu_and_off_is_off():
    for choice in ("auto", "off"):
        a = resolve_autocast(choice, "cpu")
        assert (a.dtype, a.used, a.choice) == (None, "fp32", choice)
    assert "CPU" in resolve_autocast("auto", "cpu").reason
    assert resolve_autocast("off", "cpu") == OFF


def test_bf16_may_be_asked_for_on_a_cpu():
    assert (BF16.dtype, BF16.used, BF16.choice) == ("bf16", "bf16", "bf16")
    assert BF16.to_dict() == {"dtype": "bf16", "choice": "bf16", "reason": BF16.reason, "used": "bf16"}


@pytest.mark.parametrize("choice, message", [
    ("fp16", r"^--autocast fp16 needs --accelerator cuda: float16 autocast does not help on a CPU; use bf16, auto or "
             r"off there$"),
    ("half", r"^--autocast must be one of auto, off, bf16, fp16, got 'half'$"),
    ("", r"^--autocast must be one of"),
])
def test_what_cannot_run_is_refused_in_one_line(choice, message):
    with pytest.raises(EdgepruneError, match=message):
        resolve_autocast(choice, CPU)
    with pytest.raises(EdgepruneError, match=message):
        check_autocast(choice, "cpu")


def test_fp16_is_accepted_for_cuda_without_probing_a_device():
    check_autocast("fp16", "cuda")           # the build config's check: the device is probed when the build starts
    check_autocast("fp16", "cuda:1")


def test_the_context_runs_convolutions_in_bfloat16_and_off_leaves_them_alone():
    conv = nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with BF16(CPU):
        assert conv(x).dtype == torch.bfloat16
    with OFF(CPU):
        assert conv(x).dtype == torch.float32
    assert not BF16.scaler(CPU).is_enabled()
    assert Autocast("fp16", "fp16").scaler(CPU).is_enabled()


# ---------------------------------------------------------------- bf16 on the CPU, against fp32

def test_bf16_evaluation_runs_in_bfloat16_and_is_close_to_fp32():
    model, (x, y) = resnet8().eval(), data()
    with Dtypes(model.conv1) as d32:
        fp32 = evaluate(model, batches(x, y))
    with Dtypes(model.conv1) as d16:
        bf16 = evaluate(model, batches(x, y), autocast=BF16)
    assert d32.seen == {torch.float32} and d16.seen == {torch.bfloat16}
    assert bf16.images == fp32.images == len(y)
    assert abs(bf16.top1 - fp32.top1) <= 3 / len(y)
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.02)
    assert bf16.loss != fp32.loss            # it did run another precision
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_scoring_runs_in_bfloat16_and_is_close_to_fp32():
    model, (x, y) = resnet8().eval(), data()
    blocks = candidates_for(discover(model, (1, 1, 16, 16)), replace_projection=False)
    with Dtypes(model.conv1) as d16:
        (top1, loss), per = removal_accuracy(model, blocks, batches(x, y), ScoreContext(autocast=BF16))
    (top1_32, loss_32), per_32 = removal_accuracy(model, blocks, batches(x, y), ScoreContext())
    assert d16.seen == {torch.bfloat16}
    assert abs(top1 - top1_32) <= 3 / len(y) and loss == pytest.approx(loss_32, rel=0.02) and loss != loss_32
    assert per.keys() == per_32.keys() and per
    for name in per:
        assert abs(per[name][0] - per_32[name][0]) <= 3 / len(y)
        assert per[name][1] == pytest.approx(per_32[name][1], rel=0.02)


def test_a_bf16_fine_tune_with_distillation_runs_in_bfloat16_and_lands_close_to_fp32(tmp_path):
    (x, y), teacher = data(), resnet8()
    cfg = FinetuneConfig(steps=12, lr=0.05, batch_size=32, augment="none", kd=True)
    fp32_model, bf16_model = resnet8(), resnet8()
    before = evaluate(fp32_model, batches(x, y))
    finetune(fp32_model, lambda ep: batches(x, y), len(y), cfg, teacher=copy.deepcopy(teacher), progress=None)
    with Dtypes(bf16_model.conv1) as student, Dtypes(teacher.conv1) as taught:
        finetune(bf16_model, lambda ep: batches(x, y), len(y), cfg, teacher=teacher, progress=None, autocast=BF16)
    assert student.seen == {torch.bfloat16} and taught.seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())     # the weights stay float32
    a, b = evaluate(fp32_model, batches(x, y)), evaluate(bf16_model, batches(x, y), autocast=BF16)
    assert b.loss < before.loss and a.loss < before.loss
    assert abs(a.top1 - b.top1) <= 0.05 and b.loss == pytest.approx(a.loss, rel=0.1)
    assert not torch.equal(fp32_model.fc.weight, bf16_model.fc.weight)      # another precision, another run


def test_fp16_loss_scaling_runs_and_is_checkpointed(tmp_path):
    """float16's GradScaler path (on CUDA in a build) run here through CPU autocast, which torch also has."""
    (x, y), fp16 = data(), Autocast("fp16", "fp16", "test")
    ckpt = tmp_path / "ft.ckpt"
    cfg = FinetuneConfig(epochs=2, lr=0.05, batch_size=32, augment="none", checkpoint=str(ckpt))
    model = resnet8()
    before = evaluate(model, batches(x, y))
    with Dtypes(model.conv1) as d:
        finetune(model, lambda ep: batches(x, y), len(y), cfg, progress=None, autocast=fp16)
    assert d.seen == {torch.float16}
    state = torch.load(ckpt, weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["step"] == 8
    assert evaluate(model, batches(x, y)).loss < before.loss
    assert all(torch.isfinite(p).all() for p in model.parameters())
    resumed = resnet8()                       # a finished checkpoint: its scaler state loads, nothing more to train
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # a checkpoint that failed to load would be discarded with a warning
        finetune(resumed, lambda ep: batches(x, y), len(y), cfg, progress=None, autocast=fp16)
    assert torch.equal(resumed.fc.weight, model.fc.weight)


def test_eval_with_bf16_records_it_and_matches_fp32_closely():
    r32 = runner.invoke(app, TINY_EVAL)
    r16 = runner.invoke(app, [*TINY_EVAL, "--autocast", "bf16"])
    assert r32.exit_code == 0 and r16.exit_code == 0, (r32.output, r16.output)
    a, b = json.loads(r32.stdout), json.loads(r16.stdout)
    assert a["autocast"]["used"] == "fp32" and a["autocast"]["choice"] == "auto"
    assert b["autocast"]["used"] == "bf16"
    assert abs(a["top1"] - b["top1"]) <= 3 / 64 and b["loss"] == pytest.approx(a["loss"], rel=0.02)


def test_eval_refuses_fp16_on_a_cpu_in_one_line():
    r = runner.invoke(app, [*TINY_EVAL, "--autocast", "fp16"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    assert "--autocast fp16 needs --accelerator cuda" in r.stderr


# ---------------------------------------------------------------- a real CUDA device

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_evaluates_and_fine_tunes_in_reduced_precision_close_to_fp32():
    dev = torch.device("cuda")
    amp = resolve_autocast("auto", dev)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert amp.dtype == ("bf16" if dtype == torch.bfloat16 else "fp16")
    (x, y), teacher = data(), resnet8()
    cfg = FinetuneConfig(steps=12, lr=0.05, batch_size=32, augment="none", kd=True)
    fp32_model, amp_model = resnet8(), resnet8()
    finetune(fp32_model, lambda ep: batches(x, y), len(y), cfg, teacher=copy.deepcopy(teacher), device=dev,
             progress=None)
    with Dtypes(amp_model.conv1) as d:
        finetune(amp_model, lambda ep: batches(x, y), len(y), cfg, teacher=teacher, device=dev, progress=None,
                 autocast=amp)
        r = evaluate(amp_model, batches(x, y), dev, autocast=amp)
    assert d.seen == {dtype}
    a = evaluate(fp32_model, batches(x, y), dev)
    assert abs(a.top1 - r.top1) <= 0.05 and r.loss == pytest.approx(a.loss, rel=0.1)
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in amp_model.parameters())
