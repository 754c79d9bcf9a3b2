"""The prune record: a JSON file naming the base model and the blocks removed, beside the weights.

``edgeprune prune --out pruned.pt`` writes ``pruned.pt`` (a plain state_dict) and
``pruned.json``; ``--model pruned.json`` replays the plan on a fresh copy of the base
model and loads the pruned weights, so every later stage accepts a pruned model.

A record is data, never a way around consent: its base model is a registry name, or a
``module:factory`` that runs only with ``--trust-code`` (the record's own fields never grant it,
nor ``--trust-checkpoint``); its weights file lies inside the record's own folder; a record
never names another record (so neither itself nor a cycle); every field of the wrong type is a
one-line error naming the field and the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from pathlib import PurePosixPath, PureWindowsPath
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
    if str(base_spec.get("name", "")).endswith(".json"):   # pruning a pruned model: one record on the base
        inner = read_prune_record(base_spec["name"])
        base_spec = dict(inner["model"])
        removed = list(inner["removed"]) + [r for r in removed if r not in inner["removed"]]
        replace_projection = replace_projection or bool(inner.get("replace_projection", False))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_bytes_atomic(weights, buf.getvalue())
    record = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": base_spec, "removed": removed,
              "replace_projection": replace_projection, "weights": weights.name,
              "weights_sha256": sha256_file(weights), **extra}
    write_json_atomic(record_path, record)
    return weights, record_path


def read_prune_record(path: str | Path) -> dict[str, Any]:
    """The record at ``path``, every field it uses checked for type (one-line errors naming field and file)."""
    path = Path(path)
    record = read_json(path, "prune record")
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise EdgepruneError(f"{path} is not an edgeprune prune record (schema {SCHEMA!r})")
    for key in ("model", "removed", "weights"):
        if key not in record:
            raise EdgepruneError(f"{path} lacks {key!r}")
    base = record["model"]
    if not isinstance(base, dict):
        raise EdgepruneError(f"{path}: field 'model' must be an object naming the base model, got {_kind(base)}")
    if not isinstance(base.get("name"), str) or not base["name"]:
        raise EdgepruneError(f"{path}: field 'model.name' must be a model name (string), got {_kind(base.get('name'))}")
    for key in ("num_classes", "in_channels", "input_size"):
        v = base.get(key)
        if v is not None and (type(v) is not int or v < 1):
            raise EdgepruneError(f"{path}: field 'model.{key}' must be a positive integer or null, got {v!r}")
    removed = record["removed"]
    if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
        raise EdgepruneError(f"{path}: field 'removed' must be a list of block names (strings), got {_kind(removed)}")
    if type(record.get("replace_projection", False)) is not bool:
        raise EdgepruneError(f"{path}: field 'replace_projection' must be true or false, "
                             f"got {record['replace_projection']!r}")
    if not isinstance(record["weights"], str) or not record["weights"]:
        raise EdgepruneError(f"{path}: field 'weights' must be a file name (string), got {_kind(record['weights'])}")
    digest = record.get("weights_sha256")
    if digest is not None and not isinstance(digest, str):
        raise EdgepruneError(f"{path}: field 'weights_sha256' must be a hex string, got {_kind(digest)}")
    return record


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _weights_beside(path: Path, name: str) -> Path:
    """The record's weights file, which must lie inside the record's own folder."""
    if (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive
            or ".." in PurePosixPath(name.replace("\\", "/")).parts):
        raise EdgepruneError(f"{path}: field 'weights' must name a file inside the record's folder, got {name!r}")
    folder = path.parent.resolve()
    weights = (folder / name).resolve()
    if not weights.is_relative_to(folder):
        raise EdgepruneError(f"{path}: field 'weights' {name!r} leads outside the record's folder")
    return path.parent / name


def _base_spec(path: Path, record: dict[str, Any], spec) -> Any:
    """The base model's spec: a registry name, or a factory only with the caller's own --trust-code."""
    from edgeprune.pipeline.models import ModelSpec, is_factory, known_models, refuse_untrusted_factory

    name = record["model"]["name"]
    if name.endswith(".json"):
        itself = (path.parent / name).resolve() == path.resolve() or Path(name).resolve() == path.resolve()
        raise EdgepruneError(f"{path}: field 'model.name' names a prune record ({name}{', itself' if itself else ''}); "
                             "a record's base must be a registry model or module:factory")
    if is_factory(name):
        if not spec.trust_code:
            refuse_untrusted_factory(name, f"{path}: field 'model.name'")
    elif name not in known_models():
        raise EdgepruneError(f"{path}: field 'model.name' is an unknown model {name!r}; a record's base must be "
                             "a registry model (see --help) or module:factory")
    fields = {k: record["model"].get(k) for k in ("num_classes", "in_channels", "input_size")}
    # architecture only (the pruned weights replace everything); consent is the caller's, never the record's
    return ModelSpec(name, None, **fields, trust_checkpoint=False, trust_code=spec.trust_code)


def load_prune_record(spec):
    """Rebuild a pruned model (a LoadedModel): base model, same removal, pruned weights (checksum verified)."""
    from edgeprune.pipeline.blocks import discover, remove_blocks
    from edgeprune.pipeline.models import LoadedModel, load_model, load_state_dict_strict, read_checkpoint

    path = Path(spec.name)
    record = read_prune_record(path)
    weights = _weights_beside(path, record["weights"])
    base = load_model(_base_spec(path, record, spec))
    blocks = discover(base.model, base.input_shape)
    model = remove_blocks(base.model, record["removed"], blocks, record.get("replace_projection", False))
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
