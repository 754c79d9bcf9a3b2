"""Model input: the bundled default, torchvision architectures, ``module:factory``, prune records.

``load_model(ModelSpec(...))`` resolves a model spec through a small registry of families
and returns a :class:`LoadedModel` in eval mode together with everything later stages need
(input shape, number of classes, a description of the source for the manifest).

Weights always load with ``torch.load(weights_only=True)``. A checkpoint that holds a
pickled ``nn.Module`` is refused unless ``trust_checkpoint`` is set, because unpickling
runs code from the file. Likewise a ``module:factory`` name imports and calls Python code: it
runs only when ``trust_code`` is set (``--trust-code``; a factory typed as ``--model`` on the
command line is consent by itself, one named by a config file or a prune record is not).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file
from edgeprune.pipeline import resnet_cifar
from edgeprune.pipeline.data import FASHION_MNIST_CLASSES, FMNIST_MEAN, FMNIST_STD

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Bundled:
    """Weights shipped inside the package (``assets/``), with the sha256 ``load_model`` insists on,
    and the data preprocessing they were trained with (applied where the user did not set it)."""

    file: str
    sha256: str
    data: dict[str, Any] = field(default_factory=dict)     # DataSpec fields: channels, resize, mean, std


BUNDLED: dict[str, Bundled] = {
    # benchmarks/studies/train_default.py: ResNet-56, 1x32x32 (28x28 zero-padded)
    "default": Bundled("resnet56_fmnist.pt", "7cb3f33c580d534715ae9bd2c6e2b01ecbcd1d118fd5d55a8900471dd0b5cac6"),
    # benchmarks/studies/train_mobilenet_v2.py: torchvision MobileNetV2, 3x64x64 (gray replicated, resized)
    "mobilenet_v2_fmnist": Bundled(
        "mobilenet_v2_fmnist.pt", "bf2bae123c2e1e564546381e81dec740e09ae1491af150790d7bb451687eea48", {
            "channels": 3, "resize": "resize", "mean": (FMNIST_MEAN,), "std": (FMNIST_STD,)}),
}
DEFAULT_WEIGHTS = ASSETS / BUNDLED["default"].file


@dataclass
class ModelSpec:
    """What the user asked for with ``--model`` and its companion flags."""

    name: str = "default"
    weights: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = None
    trust_checkpoint: bool = False
    trust_code: bool = False        # consent to import and run a module:factory (never read from a file)

    def to_dict(self) -> dict[str, Any]:
        """The spec as recorded in records, manifests and cache keys: consent to run code is not part of it."""
        d = asdict(self)
        d.pop("trust_code")
        return d


def is_factory(name: str) -> bool:
    """Whether a model name is ``module.path:factory`` (code to import and run), not a registry name or record."""
    return ":" in name and not name.endswith(".json")


def refuse_untrusted_factory(name: str, where: str) -> None:
    """The one refusal of a ``module:factory`` that was not consented to with ``--trust-code``."""
    raise EdgepruneError(f"{where} {name!r} imports and runs Python code (module {name.partition(':')[0]}): "
                         "pass --trust-code only if you trust that code")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    input_shape: tuple[int, int, int, int]     # (1, C, H, W)
    num_classes: int
    source: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None           # class labels the weights were trained on, if known
    data_hints: dict[str, Any] = field(default_factory=dict)   # bundled weights: the preprocessing they expect


@dataclass
class Family:
    """One way of building an nn.Module from a name."""

    build: Callable[[ModelSpec], nn.Module]
    input_size: int
    classes: list[str] | None = None
    num_classes: int | None = None     # the family's own head (bundled weights), unless --num-classes says otherwise


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a model's state_dict: what caches key on."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics; eval mode.

    Fresh models start with identity BatchNorms (and the bundled ResNet with zeroed residual
    branches), which would let an export or a numerical check look right while most of the
    network computes nothing. Random statistics make every layer matter.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


# ---------------------------------------------------------------- the family registry

def _cifar(depth: int) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        return resnet_cifar.CifarResNet(depth, spec.num_classes or 10, spec.in_channels or 1)
    return build


def _torchvision(name: str) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        import torchvision

        kwargs = {"num_classes": spec.num_classes} if spec.num_classes else {}
        if name in ("inception_v3", "googlenet"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if spec.in_channels:
            _set_in_channels(model, spec.in_channels)
        return model
    return build


def _registry() -> dict[str, Family]:
    import torchvision

    fams: dict[str, Family] = {
        "default": Family(_cifar(56), 32, FASHION_MNIST_CLASSES),
        "mobilenet_v2_fmnist": Family(_torchvision("mobilenet_v2"), 64, FASHION_MNIST_CLASSES, num_classes=10),
        "cifar_resnet20": Family(_cifar(20), 32),
        "cifar_resnet56": Family(_cifar(56), 32),
    }
    for name in torchvision.models.list_models(module=torchvision.models):
        fams[name] = Family(_torchvision(name), 299 if name == "inception_v3" else 224)
    return fams


def known_models() -> list[str]:
    return sorted(_registry())


def _set_in_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d so the stem accepts ``in_channels`` channels."""
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_channels:
                return
            if mod.groups != 1:
                raise EdgepruneError(f"cannot change input channels: first conv {qual} is grouped")
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, 1, mod.bias is not None, mod.padding_mode)
            model.set_submodule(qual, new)
            return
    raise EdgepruneError("cannot change input channels: the model has no Conv2d")


def _first_conv_channels(model: nn.Module) -> int | None:
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            return mod.in_channels
    return None


# ---------------------------------------------------------------- checkpoints

def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor] | nn.Module:
    """Read a state_dict (or, only when trusted, a pickled nn.Module) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a refused class: the bytes are garbage
            raise EdgepruneError(f"cannot read weights {path}: corrupted or truncated file "
                                 "(not a torch checkpoint)") from None
        if not trust:
            raise EdgepruneError(
                f"{path} is a pickled Python object, not a plain state_dict; unpickling it can run "
                "arbitrary code: pass --trust-checkpoint only if you trust where it came from") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure here means an unreadable file
            raise EdgepruneError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgepruneError(f"cannot read weights {path}: corrupted or truncated file ({first})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DDP
                tensors = {k[len("module."):]: v for k, v in tensors.items()}
            return tensors
    raise EdgepruneError(f"{path} holds no state_dict (found {type(obj).__name__})")


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` into ``model``, or name the first mismatched keys and shapes."""
    own = model.state_dict()
    problems = []
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            problems.append(f"{k}: weights {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if problems or missing or unexpected:
        parts = []
        if problems:
            parts.append("shape mismatch " + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))
        if missing:
            parts.append("missing " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        hint = " (try --num-classes / --in-channels)" if problems else ""
        raise EdgepruneError(f"weights do not fit {what}: " + " | ".join(parts) + hint)
    model.load_state_dict(sd, strict=False)


# ---------------------------------------------------------------- load_model

@contextmanager
def _cwd_importable() -> Iterator[None]:
    """Put the current folder first on ``sys.path`` while a factory is imported and called (as
    ``python -m`` does), then take it off again; a console script does not have it there."""
    try:
        cwd = os.getcwd()
    except OSError:             # the current folder was deleted: nothing to add
        yield
        return
    if any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        yield
        return
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        try:
            sys.path.remove(cwd)
        except ValueError:
            pass


def _from_factory(spec: ModelSpec) -> nn.Module:
    mod_name, _, attr = spec.name.partition(":")
    with _cwd_importable():
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise EdgepruneError(f"cannot import {mod_name!r} for --model {spec.name}: {e}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise EdgepruneError(f"{mod_name} has no callable {attr!r} (from --model {spec.name})")
        kwargs = {k: v for k, v in (("num_classes", spec.num_classes), ("in_channels", spec.in_channels)) if v}
        try:
            model = factory(**kwargs)
        except TypeError as e:
            raise EdgepruneError(f"calling {spec.name}({', '.join(f'{k}=' for k in kwargs)}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"{spec.name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _output_classes(model: nn.Module, shape: tuple[int, ...]) -> int:
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as e:  # noqa: BLE001 - report any failure of the forward pass as bad input
        raise EdgepruneError(
            f"the model does not run on an input of shape {tuple(shape)}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''} (check --input-size / --in-channels)") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise EdgepruneError(f"the model must return logits of shape (N, classes), got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model ``spec`` names, load its weights, and describe it."""
    if spec.name.endswith(".json"):
        from edgeprune.pipeline.record import load_prune_record
        return refuse_non_finite_weights(load_prune_record(spec))
    source: dict[str, Any] = {"model": spec.name}
    classes = None
    fams = _registry()
    if is_factory(spec.name):
        if not spec.trust_code:
            refuse_untrusted_factory(spec.name, "model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-weight models are the same in every run
            model, input_size = _from_factory(spec), spec.input_size or 224
    elif spec.name in fams:
        fam = fams[spec.name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-weight models are the same in every run
            own = replace(spec, num_classes=spec.num_classes or fam.num_classes)
            model, input_size = fam.build(own), fam.input_size
        classes = fam.classes
    else:
        raise EdgepruneError(
            f"unknown model {spec.name!r}; known: {', '.join(known_models())}; "
            "or pass module.path:factory, or a prune record .json")

    weights, hints = spec.weights, {}
    bundled = BUNDLED.get(spec.name)
    if bundled is not None and weights is None:
        path = ASSETS / bundled.file
        weights = str(path)
        if not path.is_file():
            raise EdgepruneError(f"bundled weights missing: {path} (reinstall edgeprune)")
        digest = sha256_file(path)
        if digest != bundled.sha256:
            raise EdgepruneError(f"bundled weights {path} fail their checksum "
                                 f"(sha256 {digest[:12]}..., expected {bundled.sha256[:12]}...): "
                                 "reinstall edgeprune")
        source["weights_sha256"] = digest
        hints = dict(bundled.data)
    if weights is not None:
        ckpt = read_checkpoint(weights, spec.trust_checkpoint)
        if isinstance(ckpt, nn.Module):
            model = ckpt
        else:
            load_state_dict_strict(model, ckpt, spec.name)
        source["weights"] = str(weights)
        source.setdefault("weights_sha256", sha256_file(weights))
    elif bundled is None:
        source["weights"] = None  # random initialisation: fine for latency-only work
    model.eval()
    channels = spec.in_channels or _first_conv_channels(model) or 3
    size = spec.input_size or input_size
    shape = (1, channels, size, size)
    num_classes = _output_classes(model, shape)
    if classes is not None and len(classes) != num_classes:
        classes = None
    return refuse_non_finite_weights(LoadedModel(model, spec, shape, num_classes, source, classes, hints))


def refuse_non_finite_weights(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` itself, or one line (exit 2) naming the first parameter or buffer that holds NaN or
    inf: every output of such a model, and so every accuracy or latency measured on it, is suspect."""
    tensors = [*loaded.model.named_parameters(), *loaded.model.named_buffers()]
    for name, t in tensors:
        if t.is_meta or not (t.is_floating_point() or t.is_complex()):
            continue
        bad = int((~torch.isfinite(t.detach())).sum())
        if bad:
            nan = int(torch.isnan(t.detach()).sum())
            what = loaded.source.get("weights") or loaded.spec.name
            raise EdgepruneError(f"{what}: {name} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                                 f"({nan} NaN, {bad - nan} inf) of {t.numel()}: the model's outputs cannot be "
                                 "trusted; use weights from a run that did not diverge")
    return loaded
