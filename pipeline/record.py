"""The prune record: a JSON file naming the base model and the blocks removed, beside the weights.

``edgeprune prune --out pruned.pt`` writes ``pruned.pt`` (a plain state_dict) and
``pruned.json``; ``--model pruned.json`` replays the plan on a fresh copy of the base
model and loads the pruned weights, so every later stage accepts a pruned model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.files import read_json, sha256_file, write_bytes_atomic, write_json_atomic

SCHEMA = "edgeprune/prune-record"
SCHEMA_VERSION = 1


def save_prune_record(out: str | Path, model: torch.nn.Module, base_spec: dict[str, Any], removed: list[str],
                      replace_projection: bool, extra: dict[str, Any]) -> tuple[Path, Path]:
    """Write the pruned weights to ``out`` and the record next to it (``.json``); return both paths."""
    weights = Path(out)
    if weights.suffix == ".json":
        raise EdgepruneError("--out names the weights file (e.g. pruned.pt); the record is written beside it")
    record_path = weights.with_suffix(".json")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_bytes_atomic(weights, buf.getvalue())
    record = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": base_spec, "removed": removed,
              "replace_projection": replace_projection, "weights": weights.name,
              "weights_sha256": sha256_file(weights), **extra}
    write_json_atomic(record_path, record)
    return weights, record_path


def read_prune_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    record = read_json(path, "prune record")
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise EdgepruneError(f"{path} is not an edgeprune prune record (schema {SCHEMA!r})")
    for key in ("model", "removed", "weights"):
        if key not in record:
            raise EdgepruneError(f"{path} lacks {key!r}")
    return record


def load_prune_record(spec):
    """Rebuild a pruned model (a LoadedModel): base model, same removal, pruned weights (checksum verified)."""
    from edgeprune.pipeline.blocks import discover, remove_blocks
    from edgeprune.pipeline.models import LoadedModel, ModelSpec, load_model, load_state_dict_strict, read_checkpoint

    path = Path(spec.name)
    record = read_prune_record(path)
    base_fields = {k: v for k, v in record["model"].items() if k in ModelSpec.__dataclass_fields__}
    base_fields["weights"] = None  # architecture only; the pruned weights replace everything
    base_fields["trust_checkpoint"] = False
    base = load_model(ModelSpec(**base_fields))
    blocks = discover(base.model, base.input_shape)
    model = remove_blocks(base.model, record["removed"], blocks, record.get("replace_projection", False))
    weights = path.parent / record["weights"]
    if not weights.is_file():
        raise EdgepruneError(f"pruned weights {weights} named by {path} are missing")
    if record.get("weights_sha256") and sha256_file(weights) != record["weights_sha256"]:
        raise EdgepruneError(f"pruned weights {weights} do not match the checksum in {path}")
    ckpt = read_checkpoint(weights, trust=False)
    load_state_dict_strict(model, ckpt, f"{record['model'].get('name')} minus {len(record['removed'])} blocks")
    model.eval()
    source = {**base.source, "model": record["model"].get("name"), "prune_record": str(path),
              "weights": str(weights), "weights_sha256": sha256_file(weights),
              "removed_blocks": list(record["removed"]), "accuracy": record.get("accuracy")}
    return LoadedModel(model, spec, base.input_shape, base.num_classes, source, base.classes)
