"""The build cache: one folder per build inputs, one file per stage and stage configuration.

``<out>/cache/<key>/`` where ``key`` hashes what every stage depends on (the model spec,
a fingerprint of its weights, the data, the scoring split, the seed, and the autocast precision
when it is bf16 or fp16). Inside it a stage's
file is named ``<stage>[-<hash of that stage's config>]<suffix>``: a fine-tune of another
plan or with another learning rate gets its own file, the same one is found again. Every
write is atomic, so a build interrupted at any point resumes. A file that does not load (torn
JSON, JSON of the wrong shape for its stage, an unreadable model) is discarded with one line
through ``say`` and recomputed: a corrupt cache file never fails a rerun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from edgeprune.files import sha256_json, write_json_atomic


Valid = Callable[[Any], bool]


class BuildCache:
    def __init__(self, folder: Path, say: Callable[[str], None] = lambda _m: None) -> None:
        self.folder, self.say = folder, say
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_inputs(cls, out: Path, inputs: dict[str, Any], say: Callable[[str], None] = lambda _m: None
                   ) -> "BuildCache":
        return cls(out / "cache" / sha256_json(inputs, 16), say)

    def path(self, stage: str, config: Any = None, suffix: str = ".json") -> Path:
        name = stage if config is None else f"{stage}-{sha256_json(config, 12)}"
        return self.folder / f"{name}{suffix}"

    def load(self, stage: str, config: Any = None, valid: Valid | None = None) -> Any:
        """The stage's JSON, or None when absent; a file that is not JSON, or whose content
        ``valid`` rejects, is discarded (one line through ``say``) and reads as absent."""
        p = self.path(stage, config)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            self.discard(p)
            return None
        if valid is not None and not valid(obj):
            self.discard(p, "of the wrong shape")
            return None
        return obj

    def sweep(self) -> None:
        """Remove what an interrupted writer left behind (``.<name>.*.tmp`` files, ``.<name>.tmp-*``
        folders). Only for the one build that holds the build folder's lock."""
        for p in self.folder.glob(".*"):
            if p.name.endswith(".tmp") or ".tmp-" in p.name:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def discard(self, path: Path, why: str = "") -> None:
        """Remove a cache file that failed to load (and say so): the stage recomputes it."""
        try:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        self.say(f"discarded a corrupt cache file {path.name}{' (' + why + ')' if why else ''}: recomputing")

    def save(self, stage: str, obj: Any, config: Any = None) -> None:
        write_json_atomic(self.path(stage, config), obj, indent=1)


def str_lists(obj: Any) -> bool:
    """``{str: [str, ...]}`` (the proxy orders)."""
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, list)
                                         and all(isinstance(s, str) for s in v) for k, v in obj.items())


def wall_runs(obj: Any) -> bool:
    """``{"runs": [seconds, ...]}`` (the wall time of earlier runs)."""
    return (isinstance(obj, dict) and isinstance(obj.get("runs", []), list)
            and all(_number(s) for s in obj.get("runs", [])))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
