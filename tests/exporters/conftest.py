"""Shared models and artifacts for the exporter tests (built once per session: exports take seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from edgeprune.exporters.artifact import ArtifactConfig, build_artifact
from edgeprune.pipeline.models import randomize_batchnorm
from edgeprune.pipeline.resnet_cifar import resnet56


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "resnet56":
        return randomize_batchnorm(resnet56()), (1, 1, 32, 32)
    if name == "resnet18":
        return randomize_batchnorm(torchvision.models.resnet18(num_classes=10)), (1, 3, 64, 64)
    if name == "mobilenet_v2":
        return randomize_batchnorm(torchvision.models.mobilenet_v2(num_classes=10)), (1, 3, 64, 64)
    raise KeyError(name)


def real_images(shape: tuple[int, ...], n: int = 64) -> tuple[torch.Tensor, torch.Tensor, dict, list[str]]:
    """Preprocessed images of the bundled Fashion-MNIST subset, fitted to ``shape``."""
    from edgeprune.pipeline.data import DataSpec, load_data

    bundle = load_data(DataSpec("default", channels=shape[1]), shape, 10)
    return bundle.val_images(n), bundle.val_labels(n), bundle.preprocess.to_dict(), bundle.classes


MODELS = ("resnet56", "resnet18", "mobilenet_v2")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict:
    """name -> (artifact path, manifest, model, input shape, images), built lazily."""
    root = tmp_path_factory.mktemp("artifacts")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, shape = build(name)
            images, labels, preprocess, classes = real_images(shape)
            result = build_artifact(model, shape, root / name, ArtifactConfig(), images=images, labels=labels,
                                    preprocess=preprocess, classes=classes, source={"model": name})
            cache[name] = (result.path, result.manifest, model, shape, images)
        return cache[name]

    return get


@pytest.fixture
def tiny() -> tuple[nn.Module, tuple[int, ...]]:
    """A two-layer CNN that exports in about a second."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return randomize_batchnorm(model), (1, 1, 8, 8)


def _rng_images(shape: tuple[int, ...], n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


@pytest.fixture
def rng_images():
    """Random standard-normal image batches of a given input shape."""
    return _rng_images


@pytest.fixture
def make_model():
    """name -> (model with random BatchNorms, input shape) for resnet56, resnet18, mobilenet_v2."""
    return build
