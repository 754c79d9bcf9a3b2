"""The build cache: one folder per build inputs, one file per stage and stage configuration.

``<out>/cache/<key>/`` where ``key`` hashes what every stage depends on (the model spec,
a fingerprint of its weights, the data, the scoring split, the seed). Inside it a stage's
file is named ``<stage>[-<hash of that stage's config>]<suffix>``: a fine-tune of another
plan or with another learning rate gets its own file, the same one is found again. Every
write is atomic, and a torn or unreadable JSON file reads as absent (recompute), so a
build interrupted at any point resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeprune.files import sha256_json, write_json_atomic


class BuildCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_inputs(cls, out: Path, inputs: dict[str, Any]) -> "BuildCache":
        return cls(out / "cache" / sha256_json(inputs, 16))

    def path(self, stage: str, config: Any = None, suffix: str = ".json") -> Path:
        name = stage if config is None else f"{stage}-{sha256_json(config, 12)}"
        return self.folder / f"{name}{suffix}"

    def load(self, stage: str, config: Any = None) -> Any:
        p = self.path(stage, config)
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def save(self, stage: str, obj: Any, config: Any = None) -> None:
        write_json_atomic(self.path(stage, config), obj, indent=1)
