"""`edgeprune blocks`, `edgeprune score`, `edgeprune prune`: the block engine on the command line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.cli_util import console, err_console, print_json, user_errors, warn
from edgeprune.errors import EdgepruneError
from edgeprune.build.config import validate_channel_options
from edgeprune.build.space import bn_batches
from edgeprune.pipeline.autocast import resolve_autocast
from edgeprune.pipeline.blocks import discover, macs_by_module
from edgeprune.pipeline.channel_importance import GROUP_CRITERIA, GroupContext, score_groups
from edgeprune.pipeline.channels import CHANNEL_MULTIPLE, channel_groups, channel_orders
from edgeprune.pipeline.data import load_data_for
from edgeprune.pipeline.evaluate import EVAL_BATCH_SIZE, evaluate, resolve_device
from edgeprune.pipeline.finetune import finetune, FinetuneConfig
from edgeprune.pipeline.importance import ScoreContext
from edgeprune.pipeline.models import load_model
from edgeprune.pipeline.prune import candidates, plan_remove_k, PrunePlan, rank_blocks, split_val
from edgeprune.pipeline.record import save_prune_record
from edgeprune.progress import set_enabled

ORDER = 20


@user_errors
def blocks_command(
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    trust_code: o.TrustCode = False,
    json_out: o.Json = False,
) -> None:
    """List the residual blocks of a model: name, stage, kind, parameters, MACs."""

    loaded = load_model(o.model_spec(model, weights, num_classes, in_channels, input_size, trust_checkpoint,
                                      trust_code))
    found = discover(loaded.model, loaded.input_shape)
    total_macs = _total_macs(loaded)
    if json_out:
        print_json({"model": model, "input_shape": list(loaded.input_shape), "total_macs": total_macs,
                    "total_params": sum(p.numel() for p in loaded.model.parameters()),
                    "blocks": [b.to_dict() for b in found]})
        return
    if not found:
        raise EdgepruneError(f"{model} has no residual block that torch.fx can find")
    table = Table(title=f"{model}: {len(found)} residual blocks at input {tuple(loaded.input_shape)}")
    for col in ("block", "stage", "kind", "params", "MMACs", "% of model"):
        table.add_column(col, justify="right" if col not in ("block", "kind") else "left")
    for b in found:
        table.add_row(b.name, str(b.stage), b.kind, f"{b.params:,}", f"{b.macs / 1e6:.2f}",
                      f"{100 * b.macs / total_macs:.1f}" if total_macs else "-")
    console.print(table)


def _total_macs(loaded) -> int:
    macs, _ = macs_by_module(loaded.model, loaded.input_shape)
    return sum(v for k, v in macs.items() if k and "." not in k)


def _setup(model, weights, num_classes, in_channels, input_size, trust, data, mean, std, channels, resize,
           trust_code=False, data_load="auto", data_workers=None):

    loaded = load_model(o.model_spec(model, weights, num_classes, in_channels, input_size, trust, trust_code))
    bundle = load_data_for(o.data_spec(data, mean, std, channels, resize, data_load, data_workers), loaded, warn)
    return loaded, bundle, discover(loaded.model, loaded.input_shape)


@user_errors
def score_command(
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    trust_code: o.TrustCode = False,
    data: o.Data = "default", mean: o.Mean = None, std: o.Std = None, channels: o.Channels = None,
    resize: o.Resize = "auto", data_load: o.DataLoad = "auto", data_workers: o.DataWorkers = None,
    criterion: o.Criterion = "direct", mode: o.Mode = "oneshot", score_images: o.ScoreImages = 1000,
    replace_projection: o.ReplaceProjection = False, seed: o.Seed = 0, batch_size: o.BatchSize = EVAL_BATCH_SIZE,
    lever: Annotated[str, typer.Option(help="blocks (remove each block) or channels (shrink each channel group by "
                                            "one step; criteria direct, magnitude, bn-scale).")] = "blocks",
    channel_criterion: o.ChannelCriterion = "magnitude", channel_multiple: o.ChannelMultiple = CHANNEL_MULTIPLE,
    accelerator: o.Accelerator = "cpu", autocast: o.Autocast = "auto", json_out: o.Json = False,
) -> None:
    """Score every removable block (or channel group) by a criterion (default: direct measurement) and rank them."""

    if lever not in ("blocks", "channels"):
        raise EdgepruneError(f"--lever must be blocks or channels, got {lever!r}")
    if lever == "channels":
        if criterion not in GROUP_CRITERIA:
            raise EdgepruneError(f"unknown channel-group criterion {criterion!r}; choose from {', '.join(GROUP_CRITERIA)}")
        if mode != "oneshot":
            raise EdgepruneError("--mode iterative is for blocks; channel groups are scored one step from the model")
        validate_channel_options(channel_criterion, channel_multiple)
    device = resolve_device(accelerator)
    amp = resolve_autocast(autocast, device)
    if json_out:
        set_enabled(False)
    loaded, bundle, found = _setup(model, weights, num_classes, in_channels, input_size, trust_checkpoint,
                                   data, mean, std, channels, resize, trust_code, data_load, data_workers)
    held = split_val(bundle, score_images, seed)
    if lever == "channels":
        _score_groups(loaded, bundle, held, criterion, channel_criterion, channel_multiple, batch_size,
                      device, amp, model, data, json_out)
        return
    cands = candidates(found, replace_projection)
    batches = list(bundle.batches("val", batch_size, indices=held.score))
    ctx = ScoreContext(device, seed, replace_projection, progress=f"scoring ({criterion})", autocast=amp)
    ranking = rank_blocks(loaded.model, cands, batches, ctx, criterion, mode)
    if json_out:
        print_json({"model": model, "data": data, "images": len(held.score), "split": held.to_dict(),
                    **ranking.to_dict(), "autocast": amp.to_dict()})
        return
    table = Table(title=f"{criterion} importance ({mode}) on {len(held.score)} scoring images (stratified by "
                        f"class, seed {seed}); least important first")
    for col in ("rank", "block", "importance", "top1 without", "loss without"):
        table.add_column(col, justify="left" if col == "block" else "right")
    step_of = {s["removed"]: s for s in ranking.steps}
    for i, name in enumerate(ranking.order, 1):
        s = ranking.scores.get(name)
        step = step_of.get(name)
        top1 = step["top1"] if step else (s.top1 if s else None)
        imp = step["importance"] if step else s.importance
        table.add_row(str(i), name, f"{imp:.4f}", f"{top1:.2%}" if top1 is not None else "-",
                      f"{s.loss:.4f}" if s and s.loss is not None and not step else "-")
    console.print(table)


def _score_groups(loaded, bundle, held, criterion, channel_criterion, multiple, batch_size, device, amp, model, data,
                  json_out) -> None:
    shape = loaded.input_shape
    groups = channel_groups(loaded.model, shape, multiple)
    if not any(g.max_steps for g in groups):
        raise EdgepruneError(f"{model} has no channel group that can shrink by a step of a multiple of {multiple}")
    ctx = GroupContext(shape, channel_orders(loaded.model, groups, shape, channel_criterion),
                       bn_batches=bn_batches(bundle), device=device, progress=f"scoring channel groups ({criterion})",
                       autocast=amp)
    batches = list(bundle.batches("val", batch_size, indices=held.score))
    scores = score_groups(loaded.model, groups, batches, ctx, criterion)
    order = sorted(scores, key=lambda n: (scores[n].importance, n))
    if json_out:
        print_json({"model": model, "data": data, "images": len(held.score), "split": held.to_dict(),
                    "lever": "channels", "criterion": criterion, "channel_criterion": channel_criterion,
                    "channel_multiple": multiple, "order": order, "scores": {n: s.to_dict() for n, s in scores.items()},
                    "autocast": amp.to_dict()})
        return
    table = Table(title=f"{criterion} cost of shrinking each channel group by one step ({channel_criterion} order) "
                        f"on {len(held.score)} scoring images; least important first")
    for col in ("rank", "group", "channels", "importance", "top1 after", "loss after"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for i, name in enumerate(order, 1):
        s = scores[name]
        table.add_row(str(i), name, f"{s.channels} -> {s.kept}", f"{s.importance:.4g}",
                      f"{s.top1:.2%}" if s.top1 is not None else "-", f"{s.loss:.4f}" if s.loss is not None else "-")
    console.print(table)


@user_errors
def prune_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Pruned weights file (a .json record is written beside it).")],
    remove: Annotated[Optional[int], typer.Option(help="Remove the K least important blocks.")] = None,
    blocks: Annotated[Optional[str], typer.Option(help="Remove exactly these blocks (comma-separated names).")] = None,
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    trust_code: o.TrustCode = False,
    data: o.Data = "default", mean: o.Mean = None, std: o.Std = None, channels: o.Channels = None,
    resize: o.Resize = "auto", data_load: o.DataLoad = "auto", data_workers: o.DataWorkers = None,
    criterion: o.Criterion = "direct", mode: o.Mode = "iterative", score_images: o.ScoreImages = 1000,
    replace_projection: o.ReplaceProjection = False,
    finetune_epochs: o.FinetuneEpochs = 0.0,
    finetune_steps: Annotated[Optional[int], typer.Option(help="Fine-tune for exactly N steps instead.")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 0.01,
    kd: o.Kd = False,
    temperature: o.Temperature = 4.0, alpha: o.Alpha = 0.9,
    batch_size: o.BatchSize = 128, seed: o.Seed = 0,
    force: o.Force = False,
    accelerator: o.Accelerator = "cpu", autocast: o.Autocast = "auto", json_out: o.Json = False,
) -> None:
    """Remove blocks (the K least important, or named ones), optionally fine-tune, write weights + record."""
    from pathlib import Path


    if (remove is None) == (blocks is None):
        raise EdgepruneError("pass exactly one of --remove K or --blocks NAMES")
    out_path = Path(out)
    if not force and (out_path.exists() or out_path.with_suffix(".json").exists()):
        raise EdgepruneError(f"{out_path} or its record exists; pass --force to overwrite")
    if json_out:
        set_enabled(False)
    device = resolve_device(accelerator)
    amp = resolve_autocast(autocast, device)
    loaded, bundle, found = _setup(model, weights, num_classes, in_channels, input_size, trust_checkpoint,
                                   data, mean, std, channels, resize, trust_code, data_load, data_workers)
    held = split_val(bundle, score_images, seed)
    final_batches = bundle.batches("val", EVAL_BATCH_SIZE, indices=held.final)
    ranking = None
    if blocks is not None:
        plan = PrunePlan([b.strip() for b in blocks.split(",") if b.strip()], replace_projection)
    else:
        cands = candidates(found, replace_projection)
        ctx = ScoreContext(device, seed, replace_projection, progress=f"scoring ({criterion})", autocast=amp)
        score_batches = list(bundle.batches("val", EVAL_BATCH_SIZE, indices=held.score))
        ranking = rank_blocks(loaded.model, cands, score_batches, ctx, criterion, mode, k=remove)
        plan = plan_remove_k(ranking, remove, replace_projection)
    pruned = plan.apply(loaded.model, found)
    before = evaluate(loaded.model, final_batches, device, "eval (original)", amp)
    after = evaluate(pruned, final_batches, device, "eval (pruned)", amp)
    accuracy = {"images": after.images, "shared_with_scoring": held.shared, "before": before.top1,
                "after_removal": after.top1}
    ft_cfg = None
    if finetune_epochs > 0 or finetune_steps:
        ft_cfg = FinetuneConfig(epochs=finetune_epochs, steps=finetune_steps, optimizer=optimizer, lr=lr, kd=kd,
                                temperature=temperature, alpha=alpha, batch_size=batch_size, seed=seed)
        pruned = finetune(pruned, lambda ep: bundle.batches("train", batch_size, shuffle=True, seed=seed + ep),
                          len(bundle.y_train), ft_cfg, teacher=loaded.model if kd else None, device=device,
                          autocast=amp)
        accuracy["after_finetune"] = evaluate(pruned, final_batches, device, "eval (fine-tuned)", amp).top1
    wpath, rpath = save_prune_record(
        out_path, pruned, loaded.spec.to_dict(), plan.removed, plan.replace_projection,
        {"input_shape": list(loaded.input_shape), "data": bundle.describe() | {"classes": bundle.classes},
         "ranking": ranking.to_dict() if ranking else None, "finetune": ft_cfg.to_dict() if ft_cfg else None,
         "accuracy": accuracy, "split": held.to_dict(), "torch": amp.record(device),
         "params": {"before": sum(p.numel() for p in loaded.model.parameters()),
                    "after": sum(p.numel() for p in pruned.parameters())}})
    if json_out:
        print_json({"weights": str(wpath), "record": str(rpath), "removed": plan.removed, "accuracy": accuracy})
        return
    console.print(f"removed {len(plan.removed)} blocks: {', '.join(plan.removed) or '(none)'}")
    line = f"top-1 on {accuracy['images']} held-out images: {before.top1:.2%} -> {after.top1:.2%} after removal"
    if "after_finetune" in accuracy:
        line += f" -> {accuracy['after_finetune']:.2%} after fine-tune"
    console.print(line)
    if held.shared:
        err_console.print("warning: the validation split is small; scoring and the final figure share images")
    console.print(f"wrote {wpath} and {rpath}")


def register(app: typer.Typer) -> None:
    app.command("blocks")(blocks_command)
    app.command("score")(score_command)
    app.command("prune")(prune_command)
