"""`edgeprune eval`: top-1 accuracy and loss of a model on a dataset split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgeprune import options as o
from edgeprune.cli_util import console, print_json, user_errors, warn
from edgeprune.pipeline.autocast import resolve_autocast
from edgeprune.pipeline.data import load_data_for
from edgeprune.pipeline.evaluate import EVAL_BATCH_SIZE, evaluate, resolve_device
from edgeprune.pipeline.models import load_model
from edgeprune.progress import set_enabled

ORDER = 10


@user_errors
def eval_command(
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    trust_code: o.TrustCode = False,
    data: o.Data = "default", mean: o.Mean = None, std: o.Std = None, channels: o.Channels = None,
    resize: o.Resize = "auto", data_load: o.DataLoad = "auto", data_workers: o.DataWorkers = None,
    split: Annotated[str, typer.Option(help="train or val.")] = "val",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N images.")] = None,
    batch_size: o.BatchSize = EVAL_BATCH_SIZE,
    accelerator: o.Accelerator = "cpu", autocast: o.Autocast = "auto",
    json_out: o.Json = False,
) -> None:
    """Print top-1 accuracy and loss of a model on a dataset split."""
    if json_out:
        set_enabled(False)
    device = resolve_device(accelerator)        # before any loading: a bad --accelerator fails at once
    amp = resolve_autocast(autocast, device)
    loaded = load_model(o.model_spec(model, weights, num_classes, in_channels, input_size, trust_checkpoint,
                                      trust_code))
    bundle = load_data_for(o.data_spec(data, mean, std, channels, resize, data_load, data_workers), loaded, warn)
    x, _ = bundle.split(split)
    import torch
    indices = torch.arange(min(limit, len(x)) if limit else len(x))
    result = evaluate(loaded.model, bundle.batches(split, batch_size, indices=indices),
                      device, progress=f"eval {split}", autocast=amp)
    out = {"model": model, "data": data, "split": split, **result.to_dict(), "autocast": amp.to_dict()}
    if json_out:
        print_json(out)
    else:
        console.print(f"{model} on {data} [{split}]: top-1 [bold]{result.top1:.2%}[/] "
                      f"loss {result.loss:.4f} ({result.images} images"
                      + (f", autocast {amp.used}" if amp.dtype else "") + ")")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
