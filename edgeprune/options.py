"""CLI options declared once: every option used by more than one command, with one help text.

Commands annotate parameters with these (``json_out: o.Json = False``); the default stays in
the command's signature, so the same option can default differently where it must
(``--device`` is required by ``calibrate``, ``host`` for ``predict``).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgeprune.pipeline.data import DataSpec
from edgeprune.pipeline.models import ModelSpec, is_factory

Model = Annotated[str, typer.Option("--model", "-m", help="'default' (bundled ResNet-56 / Fashion-MNIST), a "
                                    "torchvision architecture name, module.path:factory, or a prune record .json.")]
Weights = Annotated[Optional[str], typer.Option(help="State_dict file for the model (loaded with weights_only=True).")]
NumClasses = Annotated[Optional[int], typer.Option(help="Replace the classifier head with this many classes.")]
InChannels = Annotated[Optional[int], typer.Option(help="Replace the stem so it takes this many input channels.")]
InputSize = Annotated[Optional[int], typer.Option(help="Square input size (default: the model family's).")]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow a fully pickled model (runs code from the file).")]
TrustCode = Annotated[bool, typer.Option("--trust-code", help="Allow a module:factory named by a prune record or a "
                                         "config file to be imported and run (one typed as --model needs no flag).")]
Data = Annotated[str, typer.Option("--data", "-d", help="'default' (bundled Fashion-MNIST subset), an idx folder, "
                                   "a CIFAR python folder, an ImageFolder tree (train/, val/), or an .npz.")]
Mean = Annotated[Optional[str], typer.Option(help="Normalisation mean per channel, comma-separated numbers, or "
                                             "imagenet (default: the data's).")]
Std = Annotated[Optional[str], typer.Option(help="Normalisation std per channel, comma-separated numbers, or "
                                            "imagenet (default: the data's).")]
Channels = Annotated[Optional[int], typer.Option(help="Channels fed to the model (3 replicates grayscale data).")]
Resize = Annotated[str, typer.Option(help="Fit images to the model input: auto, pad (zero border), resize (stretch), "
                                     "crop (shorter side to the input size, then centre crop), or none.")]
DataLoad = Annotated[str, typer.Option("--data-load", help="ImageFolder images: auto (held in memory up to 1 GiB "
                                      "decoded, else streamed), memory (decoded when the data is read), or stream "
                                      "(decoded batch by batch by --data-workers processes).")]
DataWorkers = Annotated[Optional[int], typer.Option("--data-workers", help="DataLoader worker processes decoding "
                                                    "ImageFolder images (default: min(4, CPUs - 1); 0: this "
                                                    "process).")]
Accelerator = Annotated[str, typer.Option(help="Torch device for scoring/fine-tuning/eval: cpu, cuda, cuda:N.")]
Autocast = Annotated[str, typer.Option("--autocast", help="Mixed precision of scoring/fine-tuning/eval: auto (bf16 "
                                       "on a CUDA device that runs it natively, else fp16; off on cpu), off, bf16 "
                                       "(cpu too) or fp16 (cuda only). The ONNX export is always fp32.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]

# -- where a figure comes from: a device profile, and the device over SSH
Device = Annotated[Optional[str], typer.Option("--device", help="Device profile: a name from `edgeprune devices` "
                                               "or a TOML path.")]
Ssh = Annotated[Optional[str], typer.Option("--ssh", metavar="USER@HOST[:PORT]", help="Measure on this device over "
                                            "SSH (default: the --device profile's ssh line, if any).")]
RemotePython = Annotated[Optional[str], typer.Option("--remote-python", help="python3 on the device (default: the "
                                                     "profile's, or python3).")]
SshConfigFile = Annotated[Optional[str], typer.Option("--ssh-config", metavar="FILE", help="ssh config file (ssh -F).")]
SshTimeout = Annotated[float, typer.Option("--ssh-timeout", metavar="SECONDS", help="Longest a command on the "
                                           "device may run before it is stopped (the whole remote benchmark).")]
Calibrate = Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="--device host on a machine the "
                                         "bundled host profile was not fitted on: calibrate this one once (quick, "
                                         "cached) or, with --no-calibrate, refuse.")]
MemoryTimeout = Annotated[float, typer.Option("--memory-timeout", help="Seconds one memory probe (a fresh "
                                             "onnxruntime process here) may run.")]

# -- how onnxruntime times a model
Threads = Annotated[Optional[int], typer.Option("--threads", help="intra_op_num_threads (default: the --device "
                                                "profile's, else the baseline's, else 1).")]
Providers = Annotated[Optional[str], typer.Option("--providers", help="Execution providers in preference order, "
                                                  "comma-separated (default: the --device profile's, else the "
                                                  "baseline's, else CPU).")]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed runs first.")]
Runs = Annotated[Optional[int], typer.Option("--runs", show_default=False, help="Timed runs (default 100).")]
Shape = Annotated[Optional[list[str]], typer.Option("--shape", help="Input shape NAME=1x3x32x32 (repeatable); "
                                                    "a dynamic batch defaults to 1, other dynamic dims "
                                                    "must be given.")]
Rounds = Annotated[int, typer.Option("--rounds", help="Interleaved A/B rounds of the side-by-side ratio.")]

# -- scoring, removing and fine-tuning blocks
ScoreImages = Annotated[int, typer.Option("--score-images", help="Validation images held out to score blocks "
                                          "(the rest measure the result).")]
Criterion = Annotated[str, typer.Option("--criterion", help="direct (remove and measure), norm-ratio, bn-gamma, l1, "
                                        "random.")]
Mode = Annotated[str, typer.Option("--mode", help="oneshot (score once) or iterative (remove the weakest, re-score, "
                                   "repeat).")]
ChannelCriterion = Annotated[str, typer.Option("--channel-criterion", help="Which channels of a group go first: "
                                               "magnitude (filter L2 norm) or bn-scale (|BatchNorm gamma|).")]
ChannelMultiple = Annotated[int, typer.Option("--channel-multiple", help="Kept channel counts are multiples of this "
                                              "(docs/channel-multiple.md).")]
ReplaceProjection = Annotated[bool, typer.Option("--replace-projection", help="Also remove projection blocks, "
                                                 "replacing each by its shortcut path alone.")]
FinetuneEpochs = Annotated[float, typer.Option("--finetune-epochs", help="Fine-tune epochs after removal (0: none).")]
Kd = Annotated[bool, typer.Option("--kd", help="Distil from the unpruned model while fine-tuning.")]
Temperature = Annotated[float, typer.Option("--temperature", help="Distillation temperature (with --kd).")]
Alpha = Annotated[float, typer.Option("--alpha", help="Weight of the distillation loss (with --kd); 1 - alpha "
                                      "weighs the labels.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of everything random (random criterion, the scoring/held-out split, shuffling, "
                                   "fine-tuning).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Batch size.")]

# -- outputs and their checks
Force = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.")]
Atol = Annotated[float, typer.Option("--atol", help="Absolute tolerance on the output difference.")]
Rtol = Annotated[float, typer.Option("--rtol", help="Tolerance relative to the largest reference output.")]


def model_spec(model: str, weights: str | None, num_classes: int | None, in_channels: int | None,
               input_size: int | None, trust: bool, trust_code: bool = False) -> ModelSpec:
    """The spec of the command line's model flags. A ``module:factory`` typed as ``--model`` is consent to run
    it (the user named the code); a prune record's factory needs ``--trust-code``."""
    return ModelSpec(model, weights, num_classes, in_channels, input_size, trust, trust_code or is_factory(model))


def data_spec(data: str, mean: str | None, std: str | None, channels: int | None, resize: str,
              load: str = "auto", workers: int | None = None) -> DataSpec:
    return DataSpec(data, mean, std, channels, resize, load=load, workers=workers)        # validates itself
