"""Fine-tuning reduces loss, is seeded, resumes; the KD loss matches a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.finetune import FinetuneConfig, finetune, kd_loss
from edgeprune.pipeline.resnet_cifar import CifarResNet


def resnet20(num_classes=2):
    return CifarResNet(8, num_classes, 1)  # the smallest CIFAR ResNet keeps the test fast


def test_kd_loss_equals_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]])
    t = torch.tensor([[0.5, 2.5, 0.0], [1.0, 0.0, 2.0]])
    y = torch.tensor([1, 2])
    T, alpha = 3.0, 0.7
    soft = 0.0
    for i in range(2):
        p_t = [math.exp(v / T) for v in t[i].tolist()]
        p_t = [v / sum(p_t) for v in p_t]
        p_s = [math.exp(v / T) for v in s[i].tolist()]
        p_s = [v / sum(p_s) for v in p_s]
        soft += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    soft = soft / 2 * T * T
    hard = 0.0
    for i in range(2):
        z = [math.exp(v) for v in s[i].tolist()]
        hard += -math.log(z[y[i]] / sum(z))
    hard /= 2
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-5)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 16, 16, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return x, y


def _batches(x, y):
    return lambda epoch: [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]


def test_finetune_lowers_loss_and_is_seeded():
    x, y = _data()
    cfg = FinetuneConfig(steps=12, lr=0.05, batch_size=16, augment="none", seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = resnet20(num_classes=2)
        before = F.cross_entropy(model.eval()(x), y).item()
        finetune(model, _batches(x, y), len(x), cfg, progress=None)
        runs.append(model)
        assert F.cross_entropy(model(x), y).item() < before
    assert torch.equal(runs[0](x), runs[1](x))


def test_kd_finetune_runs_and_needs_teacher():
    x, y = _data()
    student, teacher = resnet20(num_classes=2), resnet20(num_classes=2).eval()
    with pytest.raises(EdgepruneError, match="teacher"):
        finetune(student, _batches(x, y), len(x), FinetuneConfig(steps=1, kd=True), progress=None)
    finetune(student, _batches(x, y), len(x), FinetuneConfig(steps=2, kd=True, augment="crop+flip"),
             teacher=teacher, progress=None)
    assert not student.training


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    full = resnet20(num_classes=2)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    finetune(full, _batches(x, y), len(x), FinetuneConfig(epochs=2, batch_size=16, augment="crop", lr=0.05), progress=None)
    # the same run, interrupted at the start of its second epoch, then resumed
    ck = str(tmp_path / "ft.pt")
    cfg = FinetuneConfig(epochs=2, batch_size=16, augment="crop", lr=0.05, checkpoint=ck)

    def interrupted(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return _batches(x, y)(epoch)

    part = resnet20(num_classes=2)
    part.load_state_dict(init)
    with pytest.raises(KeyboardInterrupt):
        finetune(part, interrupted, len(x), cfg, progress=None)
    assert torch.load(ck, weights_only=True)["step"] == 4
    resumed = resnet20(num_classes=2)
    resumed.load_state_dict(init)
    finetune(resumed, _batches(x, y), len(x), cfg, progress=None)
    assert torch.allclose(resumed(x), full(x), atol=1e-5)


def test_resume_mid_epoch_from_a_timed_checkpoint_matches_uninterrupted(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    full = resnet20(num_classes=2)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    finetune(full, _batches(x, y), len(x), FinetuneConfig(epochs=2, batch_size=16, augment="crop+flip", lr=0.05),
             progress=None)
    # checkpoint after every step (checkpoint_every_s=0), interrupted in the middle of the second epoch
    ck = str(tmp_path / "ft.pt")
    cfg = FinetuneConfig(epochs=2, batch_size=16, augment="crop+flip", lr=0.05, checkpoint=ck, checkpoint_every_s=0)

    def interrupted(epoch):
        for i, batch in enumerate(_batches(x, y)(epoch)):
            if epoch == 1 and i == 2:
                raise KeyboardInterrupt
            yield batch

    part = resnet20(num_classes=2)
    part.load_state_dict(init)
    with pytest.raises(KeyboardInterrupt):
        finetune(part, interrupted, len(x), cfg, progress=None)
    state = torch.load(ck, weights_only=True)
    assert (state["step"], state["epoch"], state["in_epoch"]) == (6, 1, 2)
    resumed = resnet20(num_classes=2)
    resumed.load_state_dict(init)
    finetune(resumed, _batches(x, y), len(x), cfg, progress=None)
    assert torch.allclose(resumed(x), full(x), atol=1e-5)


def _no_batchnorm():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))


def test_a_batch_over_the_memory_bound_runs_in_micro_batches_with_the_same_gradient():
    from edgeprune.pipeline.finetune import activation_mb_per_image, micro_batch

    x, y = _data()
    per_image = activation_mb_per_image(_no_batchnorm(), x[:1])
    assert per_image == pytest.approx((2 * 8 * 16 * 16 + 2 * 8 * 14 * 14 + 8 + 8 + 2) * 4 / 2**20)   # every leaf output
    roomy = FinetuneConfig(batch_size=16, steps=3, augment="none", lr=0.05)
    tight = FinetuneConfig(batch_size=16, steps=3, augment="none", lr=0.05, max_memory_mb=per_image * 1.5 * 4.5)
    assert micro_batch(_no_batchnorm(), roomy, x[:1]) == 16 and micro_batch(_no_batchnorm(), tight, x[:1]) == 4
    runs = []
    for cfg in (roomy, tight):       # without BatchNorm, 4 micro-batches of 4 give the batch's own gradient
        torch.manual_seed(0)
        m = _no_batchnorm()
        finetune(m, _batches(x, y), len(x), cfg, progress=None)
        runs.append(m)
    assert torch.allclose(runs[0](x), runs[1](x), atol=1e-5)


def test_syncbatchnorm_swaps_in_sharing_the_parameters_and_the_original_layers_come_back():
    """What CUDA fine-tunes across ranks do to BatchNorm (the swap only: training with it needs CUDA)."""
    from edgeprune.pipeline.finetune import _sync_batchnorm

    model = resnet20()
    before = dict(model.named_modules())
    bns = {n: m for n, m in before.items() if isinstance(m, torch.nn.BatchNorm2d)}
    with _sync_batchnorm(model, True):
        inside = dict(model.named_modules())
        assert all(isinstance(inside[n], torch.nn.SyncBatchNorm) for n in bns)
        assert all(inside[n].weight is m.weight and inside[n].running_mean is m.running_mean for n, m in bns.items())
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[n] is m for n, m in before.items())
    with _sync_batchnorm(model, False):
        assert all(type(m) is torch.nn.BatchNorm2d for n, m in model.named_modules() if n in bns)
