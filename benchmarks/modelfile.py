"""Identity and size of an ONNX model on disk, external-data files included, and its inputs.

A model exported with external data (``model.onnx`` + ``model.onnx.data``) is one model;
its sha256 and size must cover both, or a baseline would not notice changed weights.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
from onnx.external_data_helper import uses_external_data

from edgeprune.errors import EdgepruneError
from edgeprune.files import load_onnx, sha256_files


@dataclass
class ModelFile:
    path: str
    sha256: str                   # over the .onnx file then each external-data file, sorted
    file_bytes: int               # the .onnx file alone
    total_bytes: int              # .onnx plus external data
    external_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _external_locations(path: Path) -> list[str]:
    proto = load_onnx(path, load_external_data=False)
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def inspect_model(path: str | os.PathLike[str]) -> ModelFile:
    """Hash and size an ONNX model; one clear error line if it is missing or unreadable."""
    p = Path(path)
    if not p.exists():
        raise EdgepruneError(f"model file not found: {p}")
    if not p.is_file():
        raise EdgepruneError(f"not a file: {p}")
    externals = _external_locations(p)
    files = [p] + [p.parent / loc for loc in externals]
    for f in files:
        if not f.is_file():
            raise EdgepruneError(f"{p} refers to external data {f.name} which is missing")
    total = sum(f.stat().st_size for f in files)
    return ModelFile(str(p), sha256_files(files), p.stat().st_size, total, externals)


def input_dims(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """The declared dims of each graph input (initializers aside): a size, or the dimension's
    symbolic name (``"?"`` when it has none)."""
    inits = {i.name for i in proto.graph.initializer}
    return {inp.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                       for d in inp.type.tensor_type.shape.dim]
            for inp in proto.graph.input if inp.name not in inits and inp.type.HasField("tensor_type")}


def check_dynamic_dims(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> None:
    """Refuse an input with a dynamic dimension besides the batch that ``shapes`` (``--shape``) does not fix.

    A dynamic batch (the first dimension) is fed as 1; a dynamic height or width fed as 1 would
    time or predict a 1x1 image, a figure that means nothing.
    """
    for name, dims in input_dims(proto).items():
        if name in (shapes or {}) or all(isinstance(d, int) for d in dims[1:]):
            continue
        example = [1 if not isinstance(dims[0], int) else dims[0]] + [d if isinstance(d, int) else 224
                                                                      for d in dims[1:]]
        raise EdgepruneError(f"input '{name}' has dynamic dims ({', '.join(str(d) for d in dims)}) and only a "
                             f"dynamic batch defaults to 1: pass its shape, e.g. "
                             f"--shape {name}={'x'.join(str(d) for d in example)}")
