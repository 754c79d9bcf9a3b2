"""`resolve_device` (only cpu, cuda, cuda:N that exist) and `evaluate`'s refusal of non-finite outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline import evaluate as ev
from edgeprune.pipeline.evaluate import evaluate, resolve_device

runner = CliRunner()
TINY = ["eval", "--model", "cifar_resnet20", "--data", "default", "--limit", "8"]


def one_line_error(r, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr
    return r.stderr


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_cudas(monkeypatch):
    """CUDA seen as present with two devices; the probe that puts a value on one is recorded, not run."""
    probed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(ev, "_probe", probed.append)
    return probed


def test_cpu_is_accepted():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("name", ["meta", "xla", "hpu", "mps", "ipu", "xpu", "privateuseone", "cpu:1", "gpu",
                                  "cuda:-1", "cuda:x", "", "cuda:0:1"])
def test_other_device_types_are_refused_listing_what_is_accepted(name):
    with pytest.raises(EdgepruneError, match=r"accepts cpu, cuda, cuda:N") as e:
        resolve_device(name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_cuda_is_refused(no_cuda, name):
    with pytest.raises(EdgepruneError, match=r"no CUDA device is available.*accepts cpu, cuda, cuda:N"):
        resolve_device(name)


def test_cuda_index_beyond_the_devices_present_is_refused(two_cudas):
    with pytest.raises(EdgepruneError, match=r"cuda:7: there are only 2 CUDA devices here \(cuda:0\.\.cuda:1\)"):
        resolve_device("cuda:7")
    with pytest.raises(EdgepruneError, match=r"only 2 CUDA"):
        resolve_device("cuda:2")
    assert two_cudas == []


def test_cuda_devices_present_are_accepted(two_cudas):
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert two_cudas == [torch.device("cuda"), torch.device("cuda", 1)]


def test_cuda_that_cannot_be_used_is_one_line(monkeypatch, two_cudas):
    def broken(dev):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")
    monkeypatch.setattr(ev, "_probe", broken)
    with pytest.raises(EdgepruneError, match=r"^--accelerator cuda:0 cannot be used: CUDA error: no kernel image"
                                             r" is available for execution on the device$"):
        resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_devices():
    n = torch.cuda.device_count()
    assert resolve_device("cuda:0").type == "cuda"
    with pytest.raises(EdgepruneError, match=f"only {n} CUDA"):
        resolve_device(f"cuda:{n}")


@pytest.mark.parametrize("name", ["meta", "xla", "hpu", "mps", "cuda:7"])
def test_eval_refuses_unusable_accelerators_in_one_line(no_cuda, name):
    r = runner.invoke(app, [*TINY, "--accelerator", name])
    one_line_error(r, "cpu, cuda, cuda:N")


def test_eval_on_cpu_reports_an_accuracy():
    r = runner.invoke(app, [*TINY, "--accelerator", "cpu", "--json"])
    assert r.exit_code == 0, r.output


class NanOnBatch(nn.Module):
    """Logits that turn NaN for inputs whose first pixel is above 100 (one image of the second batch)."""

    def forward(self, x):
        out = x.flatten(1)[:, :3].clone()
        out[x.flatten(1)[:, 0] > 100] = float("nan")
        return out


def test_evaluate_refuses_non_finite_outputs_naming_the_first_batch():
    x = torch.zeros(10, 1, 2, 2)
    x[6, 0, 0, 0] = 200.0
    y = torch.zeros(10, dtype=torch.long)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]
    with pytest.raises(EdgepruneError, match=r"^the model's outputs on batch 2 of 3 \(images 4-7\) are not finite "
                                             r"\(NaN or inf for 1 of 4 images\)") as e:
        evaluate(NanOnBatch(), batches)
    assert "\n" not in str(e.value)
    assert evaluate(NanOnBatch(), batches[:1]).images == 4


def test_evaluate_refuses_non_finite_inputs():
    x = torch.zeros(3, 1, 2, 2)
    x[2, 0, 1, 1] = float("inf")
    with pytest.raises(EdgepruneError, match=r"the inputs of batch 1 of 1 \(images 0-2\) are not finite"):
        evaluate(NanOnBatch(), [(x, torch.zeros(3, dtype=torch.long))])


def test_eval_refuses_a_model_whose_outputs_overflow_on_the_data(tmp_path):
    """Finite weights (the load check passes) whose logits overflow to inf on the real images: exit 2."""
    from edgeprune.pipeline.models import ModelSpec, load_model
    model = load_model(ModelSpec("cifar_resnet20")).model
    sd = model.state_dict()
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], 3e38)
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], 3e38)
    torch.save(sd, tmp_path / "huge.pt")
    r = runner.invoke(app, [*TINY, "--weights", str(tmp_path / "huge.pt")])
    one_line_error(r, "outputs on batch 1 of 1", "not finite")
    assert "top-1" not in r.stdout


def test_eval_refuses_nan_pixels_before_any_accuracy(tmp_path):
    x = np.random.default_rng(0).random((20, 32, 32)).astype(np.float32)
    x[3, 5, 5] = x[11, 0, 0] = np.nan
    y = np.arange(20) % 10
    np.savez(tmp_path / "nan.npz", x_train=x, y_train=y, x_val=x, y_val=y)
    r = runner.invoke(app, ["eval", "--model", "cifar_resnet20", "--data", str(tmp_path / "nan.npz")])
    one_line_error(r, "nan.npz", "x_train holds 2 non-finite pixel values", "first in image 3")


def test_a_model_that_fails_on_real_data_is_one_line(tmp_path, monkeypatch):
    """Traces and exports on one image, raises on a batch of real images: eval and build say so in one line."""
    (tmp_path / "raises.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.c = torch.nn.Conv2d(in_channels, num_classes, 3)\n"
        "    def forward(self, x):\n"
        "        if x.shape[0] > 1:\n"
        "            raise ValueError('boom on real data')\n"
        "        return self.c(x).mean((2, 3))\n"
        "def factory(num_classes=10, in_channels=1):\n"
        "    return M(num_classes, in_channels)\n")
    monkeypatch.chdir(tmp_path)
    from typer.testing import CliRunner

    from edgeprune.cli import app
    r = CliRunner().invoke(app, ["eval", "--model", "raises:factory", "--input-size", "32"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "boom on real data" in r.stderr, r.output
    assert "the model fails on batch 1" in r.stderr
