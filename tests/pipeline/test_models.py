"""Model input: registry names, module:factory, weights loading and its refusals."""

from __future__ import annotations

import shutil
import textwrap

import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file
from edgeprune.pipeline import models
from edgeprune.pipeline.data import DataSpec, load_data, load_data_for
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.models import ModelSpec, load_model


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def tiny(num_classes=10, in_channels=1):
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        def fixed(num_classes=10):
            return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, num_classes))
        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_nets"


def test_torchvision_by_name_with_new_head_and_stem():
    m = load_model(ModelSpec("resnet18", num_classes=7, in_channels=1, input_size=32))
    assert m.input_shape == (1, 1, 32, 32) and m.num_classes == 7
    assert m.model.conv1.in_channels == 1 and not m.model.training


def test_cifar_family_and_default_input_size():
    m = load_model(ModelSpec("cifar_resnet20"))
    assert m.input_shape == (1, 1, 32, 32) and m.num_classes == 10


def test_unknown_name_lists_known():
    with pytest.raises(EdgepruneError, match="known: .*resnet18"):
        load_model(ModelSpec("resnet9000"))


def test_factory_with_weights(factory_module, tmp_path):
    ref = load_model(ModelSpec(f"{factory_module}:tiny", input_size=16, trust_code=True)).model
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    m = load_model(ModelSpec(f"{factory_module}:tiny", weights=str(tmp_path / "w.pt"), input_size=16,
                             trust_code=True))
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(m.model(x), ref(x))
    assert m.source["weights_sha256"] == sha256_file(tmp_path / "w.pt")


def test_factory_needs_consent_in_the_library_and_a_typed_factory_is_consent(tmp_path, monkeypatch):
    from edgeprune import options as o

    (tmp_path / "marker_nets_lib.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n" + CWD_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EdgepruneError, match="--trust-code"):
        load_model(ModelSpec("marker_nets_lib:factory", input_size=8))
    assert not (tmp_path / "ran").exists()
    assert o.model_spec("marker_nets_lib:factory", None, None, None, 8, False).trust_code
    assert not o.model_spec("rec.json", None, None, None, 8, False).trust_code
    assert "trust_code" not in ModelSpec("x:y", trust_code=True).to_dict()     # never recorded


def test_factory_errors(factory_module):
    with pytest.raises(EdgepruneError, match="no callable 'NOT_CALLABLE'"):
        load_model(ModelSpec(f"{factory_module}:NOT_CALLABLE", trust_code=True))
    with pytest.raises(EdgepruneError, match="cannot import"):
        load_model(ModelSpec("no_such_module_xyz:f", trust_code=True))


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path):
    sd = load_model(ModelSpec("cifar_resnet20", num_classes=5)).model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(EdgepruneError, match=r"fc.weight: weights \(5, 64\) vs model \(10, 64\)"):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "w.pt")))
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w2.pt")
    with pytest.raises(EdgepruneError, match="missing fc.bias.*unexpected extra.weight"):
        load_model(ModelSpec("cifar_resnet20", num_classes=5, weights=str(tmp_path / "w2.pt")))


def test_pickled_model_needs_trust_flag(tmp_path):
    net = models.resnet_cifar.resnet20()
    torch.save(net, tmp_path / "full.pt")
    with pytest.raises(EdgepruneError, match="--trust-checkpoint"):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "full.pt")))
    m = load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "full.pt"), trust_checkpoint=True))
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(m.model(x), net.eval()(x))


def test_truncated_and_missing_weights(tmp_path):
    torch.save(load_model(ModelSpec("cifar_resnet20")).model.state_dict(), tmp_path / "w.pt")
    raw = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EdgepruneError, match="corrupted or truncated"):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "w.pt")))
    with pytest.raises(EdgepruneError, match="not found"):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "nope.pt")))


def test_bundled_weights_checksum_is_enforced(tmp_path, monkeypatch):
    tampered = tmp_path / "resnet56_fmnist.pt"
    shutil.copy(models.DEFAULT_WEIGHTS, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    monkeypatch.setattr(models, "ASSETS", tmp_path)
    with pytest.raises(EdgepruneError, match="fail their checksum"):
        load_model(ModelSpec("default"))


def test_bundled_mobilenet_v2_brings_its_preprocessing_and_accuracy():
    m = load_model(ModelSpec("mobilenet_v2_fmnist"))
    assert m.input_shape == (1, 3, 64, 64) and m.num_classes == 10 and m.classes[9] == "Ankle boot"
    bundle = load_data_for(DataSpec("default"), m)        # 28x28 gray: replicated and resized, as trained
    pre = bundle.preprocess
    assert (pre.channels, pre.size, pre.geometry, pre.mean) == (3, (64, 64), "resize", (0.286,) * 3)
    result = evaluate(m.model, bundle.batches("val", 250))
    assert result.images == 2000 and result.top1 >= 0.90, result
    # what the user sets wins over what the weights were trained with
    assert load_data_for(DataSpec("default", mean=(0.5,), std=(0.5,)), m).preprocess.mean == (0.5,) * 3


def test_bundled_model_accuracy_on_bundled_test_subset():
    m = load_model(ModelSpec("default"))
    assert m.classes[9] == "Ankle boot"
    bundle = load_data(DataSpec("default"), m.input_shape, m.num_classes)
    result = evaluate(m.model, bundle.batches("val", 500))
    assert result.images == 2000
    assert result.top1 >= 0.92, result


def test_model_that_does_not_run_at_input_size(factory_module):
    assert load_model(ModelSpec(f"{factory_module}:fixed", input_size=16, trust_code=True)).num_classes == 10
    with pytest.raises(EdgepruneError, match=r"does not run on an input of shape \(1, 1, 8, 8\)"):
        load_model(ModelSpec(f"{factory_module}:fixed", input_size=8, trust_code=True))


def test_in_channels_on_model_without_conv():
    with pytest.raises(EdgepruneError, match="no Conv2d"):
        models._set_in_channels(nn.Sequential(nn.Linear(2, 2)), 3)


CWD_FACTORY = """
import torch.nn as nn
def factory(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


def test_factory_module_in_the_current_folder_imports_without_pythonpath(tmp_path, monkeypatch):
    import os
    import sys

    (tmp_path / "cwd_nets_abc.py").write_text(CWD_FACTORY)
    monkeypatch.chdir(tmp_path)
    # pytest run as `python -m pytest` has the current folder on sys.path; a console script does not
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or os.curdir) != str(tmp_path)])
    before = list(sys.path)
    m = load_model(ModelSpec("cwd_nets_abc:factory", num_classes=3, input_size=8, trust_code=True))
    assert m.num_classes == 3
    assert sys.path == before          # the folder was on the import path only while importing
    sys.modules.pop("cwd_nets_abc", None)


def test_console_script_loads_factory_from_the_current_folder(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "mymodels.py").write_text(CWD_FACTORY)
    exe = Path(sys.executable).parent / "edgeprune"
    assert exe.is_file(), exe
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(exe), "blocks", "--model", "mymodels:factory", "--input-size", "16", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "mymodels:factory" and out["input_shape"] == [1, 1, 16, 16] and out["blocks"] == []


# ---------------------------------------------------------------- weights that cannot be trusted
import re  # noqa: E402

def _eval_cli(*args):
    from typer.testing import CliRunner

    from edgeprune.cli import app
    return CliRunner().invoke(app, ["eval", "--model", "cifar_resnet20", "--data", "default", "--limit", "8", *args])


@pytest.mark.parametrize("key,value", [("fc.weight", float("nan")), ("conv1.weight", float("inf")),
                                       ("bn1.running_var", float("nan"))])
def test_state_dict_with_a_non_finite_value_is_refused_at_load(tmp_path, key, value):
    sd = load_model(ModelSpec("cifar_resnet20")).model.state_dict()
    sd[key].view(-1)[1] = value
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(EdgepruneError, match=r"bad\.pt: " + re.escape(key) + " holds 1 non-finite value "):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "bad.pt")))
    r = _eval_cli("--weights", str(tmp_path / "bad.pt"))
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"{key} holds 1 non-finite value" in r.stderr and "top-1" not in r.stdout


def test_finite_weights_load_and_evaluate(tmp_path):
    torch.save(load_model(ModelSpec("cifar_resnet20")).model.state_dict(), tmp_path / "ok.pt")
    r = _eval_cli("--weights", str(tmp_path / "ok.pt"), "--json")
    assert r.exit_code == 0, r.output


def test_pickled_module_with_nan_is_refused(tmp_path):
    model = load_model(ModelSpec("cifar_resnet20")).model
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    torch.save(model, tmp_path / "m.pt")
    with pytest.raises(EdgepruneError, match=r"m\.pt: fc\.bias holds 1 non-finite value \(1 NaN, 0 inf\)"):
        load_model(ModelSpec("cifar_resnet20", weights=str(tmp_path / "m.pt"), trust_checkpoint=True))
