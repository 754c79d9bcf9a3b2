"""CLI options shared by every command that takes a model and data, declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgeprune.pipeline.data import DataSpec
from edgeprune.pipeline.models import ModelSpec

Model = Annotated[str, typer.Option("--model", "-m", help="'default' (bundled ResNet-56 / Fashion-MNIST), a "
                                    "torchvision architecture name, module.path:factory, or a prune record .json.")]
Weights = Annotated[Optional[str], typer.Option(help="State_dict file for the model (loaded with weights_only=True).")]
NumClasses = Annotated[Optional[int], typer.Option(help="Replace the classifier head with this many classes.")]
InChannels = Annotated[Optional[int], typer.Option(help="Replace the stem so it takes this many input channels.")]
InputSize = Annotated[Optional[int], typer.Option(help="Square input size (default: the model family's).")]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow a fully pickled model (runs code from the file).")]
Data = Annotated[str, typer.Option("--data", "-d", help="'default' (bundled Fashion-MNIST subset), an idx folder, "
                                   "a CIFAR python folder, an ImageFolder tree (train/, val/), or an .npz.")]
Mean = Annotated[Optional[str], typer.Option(help="Normalisation mean per channel, comma-separated (default: the data's).")]
Std = Annotated[Optional[str], typer.Option(help="Normalisation std per channel, comma-separated (default: the data's).")]
Channels = Annotated[Optional[int], typer.Option(help="Channels fed to the model (3 replicates grayscale data).")]
Resize = Annotated[str, typer.Option(help="Fit images to the model input: auto, pad, resize, or none.")]
Accelerator = Annotated[str, typer.Option(help="Torch device for scoring/fine-tuning/eval: cpu, cuda, cuda:N.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        from edgeprune.errors import EdgepruneError
        raise EdgepruneError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def model_spec(model: str, weights: str | None, num_classes: int | None, in_channels: int | None,
               input_size: int | None, trust: bool) -> ModelSpec:
    return ModelSpec(model, weights, num_classes, in_channels, input_size, trust)


def data_spec(data: str, mean: str | None, std: str | None, channels: int | None, resize: str) -> DataSpec:
    if resize not in ("auto", "pad", "resize", "none"):
        from edgeprune.errors import EdgepruneError
        raise EdgepruneError(f"--resize must be auto, pad, resize or none, got {resize!r}")
    return DataSpec(data, _floats(mean, "--mean"), _floats(std, "--std"), channels, resize)
