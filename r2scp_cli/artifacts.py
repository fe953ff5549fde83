"""Stage outputs: ``meta.json`` written last and atomically, fingerprints, and atomic writes.

An artifact is a directory (``meta.json`` inside) or a single file (``<file>.meta.json`` beside it).
The presence of the meta file means the stage finished. A stage calls :func:`begin`, which either
reports that the same configuration already finished on the same inputs, or clears the old meta file
and returns a :class:`StageRun`; the stage does its work and calls :meth:`StageRun.finish` last.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .config import config_dict
from .errors import UserError

META_NAME = "meta.json"
_HEAD_TAIL_BYTES = 1 << 20  # large files are fingerprinted by size, head and tail


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs get the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- fingerprints


def meta_path(artifact: Path) -> Path:
    """Where an artifact's meta file lives: inside a directory, or beside a file."""
    artifact = Path(artifact)
    if artifact.is_dir() or (not artifact.exists() and artifact.suffix == ""):
        return artifact / META_NAME
    return artifact.with_name(artifact.name + ".meta.json")


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as handle:
        if size <= 2 * _HEAD_TAIL_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_HEAD_TAIL_BYTES))
            handle.seek(-_HEAD_TAIL_BYTES, os.SEEK_END)
            digest.update(handle.read())


def fingerprint(path: Path) -> str:
    """A content fingerprint of an input.

    A finished artifact is identified by its meta file (rewritten on every finished run); a plain
    file by its bytes (size, first and last MiB for large files); a plain directory by its files in
    sorted order: the bytes of files up to 1 MiB (annotations), size and modification time of larger
    ones (media), so that fingerprinting a real benchmark does not read every clip.
    """
    path = Path(path)
    digest = hashlib.sha256()
    meta = meta_path(path)
    if meta.exists():
        digest.update(meta.read_bytes())
    elif path.is_file():
        _file_digest(path, digest)
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode())
            stat = child.stat()
            if stat.st_size <= _HEAD_TAIL_BYTES:  # annotations and other small files: their bytes
                _file_digest(child, digest)
            else:  # media: reading every clip would cost minutes on a real benchmark
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        raise UserError(f"{path}: no such file or directory")
    return digest.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """The full sha256 of a file (model weights, checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- stage runs


def require(artifact: Path, stage: str) -> dict:
    """The meta of a finished input artifact, or a one-line error naming what to run."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UserError(f"{artifact}: not found; run `r2scp {stage}` first")
    meta = meta_path(artifact)
    if not meta.exists():
        raise UserError(f"{artifact}: unfinished (no {meta.name}); run `r2scp {stage}` again")
    data = read_json(meta)
    if data.get("stage") != stage:
        raise UserError(f"{artifact}: made by `{data.get('stage')}`, expected the output of `{stage}`")
    return data


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _torch_version() -> str | None:
    """torch's version, without importing torch (seconds) in stages that do not use it."""
    import sys
    from importlib import metadata

    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - torch is a dependency
        return None


@dataclass
class StageRun:
    """A stage in progress; :meth:`finish` writes the meta file, last."""

    stage: str
    artifact: Path
    config: dict
    inputs: dict[str, dict]
    finished: bool = False  # True when the same config already finished on the same inputs
    started: float = field(default_factory=time.time)
    previous: dict | None = None

    @property
    def meta_path(self) -> Path:
        return meta_path(self.artifact)

    def finish(self, figures: dict | None = None, **extra: Any) -> dict:
        meta = {
            "stage": self.stage,
            "run_id": uuid.uuid4().hex,  # a finished rerun is a new input for the next stage
            "config": self.config,
            "inputs": self.inputs,
            "version": __version__,
            "git_commit": git_commit(),
            "torch_version": _torch_version(),
            "python": platform.python_version(),
            "started": _iso(self.started),
            "finished": _iso(time.time()),
            "seconds": round(time.time() - self.started, 3),
            "figures": figures or {},
            **extra,
        }
        write_json(self.meta_path, meta)
        return meta


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))


def begin(stage: str, artifact: Path, config, inputs: dict[str, Path], force: bool = False) -> StageRun:
    """Start a stage, or find it finished with the same config and inputs.

    ``config`` is the stage's frozen dataclass; ``inputs`` names the paths it reads. When the
    artifact is finished with an equal config and equal input fingerprints, the returned run has
    ``finished=True`` and the stage should return at once (unless ``force``). Otherwise the old
    meta file is removed first, so an interrupted rerun never looks finished.
    """
    artifact = Path(artifact)
    config_json = json.loads(json.dumps(config_dict(config)))
    fingerprints = {
        name: {"path": str(path), "fingerprint": fingerprint(path)} for name, path in inputs.items()
    }
    run = StageRun(stage, artifact, config_json, fingerprints)
    meta = run.meta_path
    if meta.exists():
        previous = read_json(meta)
        same = previous.get("config") == config_json and previous.get("inputs") == fingerprints
        if same and not force:
            run.finished = True
            run.previous = previous
            return run
        meta.unlink()
    if meta.name == META_NAME:
        artifact.mkdir(parents=True, exist_ok=True)
    else:
        artifact.parent.mkdir(parents=True, exist_ok=True)
    return run
