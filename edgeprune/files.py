"""Files on disk, one way each: hashing, atomic writes, a staged folder, reads that fail in one line.

* ``sha256_file`` - the hex digest of a file, streamed; ``sha256_files`` - one digest over
  several files in order.
* ``write_bytes_atomic`` / ``write_text_atomic`` / ``write_json_atomic`` / ``save_torch_atomic`` -
  write through a temporary file in the same folder and rename it into place, so a reader
  (or a resumed run) sees the old file or the new one, never half of one. The result gets
  the permissions a plain ``open()`` would give it (the umask), as does a staged folder.
* ``naming_disk_errors`` - a disk refusal (full, quota, read-only, too large) raised while a file
  is written names that file, so the one-line error says where.
* ``replace_folder`` - move a finished folder over an existing one, rolling back on failure;
  ``staged_folder`` - a context manager that yields an empty folder beside the target and
  renames it into place only when the block succeeds.
* ``read_json`` / ``read_toml`` / ``load_onnx`` - read a user's file or raise
  :class:`EdgepruneError` with one line naming the file and what is wrong.

``benchmarks/ort_runner.py`` and ``devices/arm_verify_worker.py`` keep their own few lines
of hashing: they are shipped to devices as single files that import nothing of edgeprune.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from edgeprune.errors import DISK_ERRORS, EdgepruneError

PathLike = str | os.PathLike[str]


def sha256_file(path: PathLike) -> str:
    return sha256_files([path])


def sha256_files(paths: Iterable[PathLike]) -> str:
    """One digest over the bytes of ``paths`` in the given order (a model and its external
    data as one thing); for a single file it equals :func:`sha256_file`."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any, length: int | None = None) -> str:
    """Digest of ``obj`` as canonical JSON (sorted keys): a stable key for a configuration."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:length] if length else digest


# ---------------------------------------------------------------- atomic writes

def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def naming_disk_errors(path: PathLike) -> Iterator[None]:
    """Give a disk refusal raised in the block the name of the file being written (a failed
    ``write()`` carries none)."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_ERRORS or e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def _write_atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp's 0600 would make the result private
        with naming_disk_errors(path):
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def write_json_atomic(path: PathLike, obj: Any, indent: int | None = 2, strict: bool = False) -> Path:
    """JSON with a trailing newline; ``strict`` refuses NaN/inf and values JSON cannot hold
    (one-line error) instead of writing them with ``default=str``."""
    try:
        text = (json.dumps(obj, indent=indent, allow_nan=False) if strict
                else json.dumps(obj, indent=indent, default=str)) + "\n"
    except (TypeError, ValueError) as e:
        raise EdgepruneError(f"cannot write {Path(path).name}: {e}") from None
    return write_text_atomic(path, text)


def save_torch_atomic(path: PathLike, obj: Any) -> Path:
    import torch

    return _write_atomic(path, lambda tmp: torch.save(obj, tmp))


# ---------------------------------------------------------------- folders

def replace_folder(src: PathLike, dst: PathLike) -> Path:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is replaced and is
    put back if the final rename fails."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.replace(src, dst)
        return dst
    if not dst.is_dir():
        raise EdgepruneError(f"{dst} exists and is not a folder")
    holder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, holder / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(holder / dst.name, dst)
        shutil.rmtree(holder, ignore_errors=True)
        raise
    shutil.rmtree(holder, ignore_errors=True)
    return dst


@contextlib.contextmanager
def staged_folder(target: PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block succeeds it replaces
    ``target`` (see :func:`replace_folder`), when it fails it is removed and ``target`` is
    untouched. ``check(target)`` runs before and again just before the swap (e.g. to refuse
    overwriting without ``--force``)."""
    target = Path(target).absolute()
    if check:
        check(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())   # mkdtemp's 0700 would make the result private
        yield staging
        if check:
            check(target)          # it may have appeared meanwhile
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------- reads that fail in one line

def _existing_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise EdgepruneError(f"{what} not found: {p}")
    if not p.is_file():
        raise EdgepruneError(f"{what} is not a file: {p}")
    return p


def _parse(path: PathLike, what: str, fmt: str, parse: Callable[[str], Any], errors: tuple[type, ...]) -> Any:
    p = _existing_file(path, what)
    try:
        return parse(p.read_text(encoding="utf-8"))
    except (*errors, UnicodeDecodeError) as e:
        raise EdgepruneError(f"{what} {p} is not valid {fmt}: {e}") from None
    except OSError as e:
        raise EdgepruneError(f"cannot read {what} {p}: {e.strerror or e}") from None


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    return _parse(path, what, "JSON", json.loads, (json.JSONDecodeError,))


def read_toml(path: PathLike, what: str = "TOML file") -> dict[str, Any]:
    return _parse(path, what, "TOML", tomllib.loads, (tomllib.TOMLDecodeError,))


def load_onnx(path: PathLike, load_external_data: bool = True):
    """``onnx.load`` of a user's file, or one line saying it is missing or not an ONNX model."""
    import onnx

    p = _existing_file(path, "model file")
    try:
        return onnx.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
        first = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise EdgepruneError(f"{p} is not a readable ONNX model: {first}") from None
