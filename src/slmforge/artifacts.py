"""Artifact folders and output files: manifests, atomic writes, the --force rule, hashing.

Every stage writes its output into a temporary sibling of the final path and renames it into
place only when everything (including `slmforge.json`) is written, so a crash or Ctrl-C never
leaves a half artifact where a later stage would pick it up.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmforge import __version__
from slmforge.errors import InputError, OutputExistsError

MANIFEST = "slmforge.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` (relative posix paths), except the manifest."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            hashes[path.relative_to(folder).as_posix()] = sha256_file(path)
    return hashes


def folder_digest(folder: Path) -> str:
    """One sha256 for a whole folder: the manifest's file hashes if present, else the files."""
    manifest = read_manifest(folder)
    hashes = manifest.files if manifest and manifest.files else file_hashes(folder)
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


class Source(BaseModel):
    """Where an artifact came from: a path or hub id, and the hash of what was read."""

    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str | None = None
    kind: str | None = None


class Manifest(BaseModel):
    """`slmforge.json`: what made an artifact, from what, with which config, and its metrics."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    slmforge_version: str = __version__
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    source: dict[str, Source] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    chat_template: str | None = None
    stop: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)


def read_manifest(folder: str | Path) -> Manifest | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(
            f"{path}: not a valid slmforge manifest ({exc.__class__.__name__})"
        ) from exc


def check_output(path: str | Path, force: bool) -> Path:
    """Fail before any work when `path` exists and may not be replaced."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to replace it")
    return path


def _temp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _replace(temp: Path, final: Path) -> None:
    """Move `temp` to `final`, replacing what is there only after the new one is complete."""
    if final.exists():
        old = _temp_sibling(final)
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(temp, final)


@contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; it becomes `path` only if the block finishes."""
    final = check_output(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(final)
    try:
        yield temp
        if not temp.exists():
            raise InputError(f"nothing was written for {final}")
        _replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()


class ArtifactWriter:
    """Handle to an artifact being written: `path` is the temp folder, `manifest` the record."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path / name
        target.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
        return target


@contextmanager
def artifact(path: str | Path, kind: str, force: bool = False) -> Iterator[ArtifactWriter]:
    """Write an artifact folder atomically, with its manifest and file hashes.

    ```
    with artifact(out, "adapter", force=cfg.force) as art:
        model.save_pretrained(art.path)
        art.manifest.metrics["train_loss"] = 1.2
    ```
    """
    final = check_output(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(final)
    temp.mkdir()
    writer = ArtifactWriter(temp, Manifest(kind=kind))
    try:
        yield writer
        writer.manifest.files = file_hashes(temp)
        (temp / MANIFEST).write_text(writer.manifest.model_dump_json(indent=2) + "\n", "utf-8")
        _replace(temp, final)
        writer.path = final
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def source_of(path: str | Path, kind: str | None = None) -> Source:
    """A `Source` for a file or folder on disk, or for a hub id that is not a local path."""
    p = Path(path)
    if p.is_file():
        return Source(path=str(p), sha256=sha256_file(p), kind=kind)
    if p.is_dir():
        return Source(path=str(p.resolve()), sha256=folder_digest(p), kind=kind)
    return Source(path=str(path), kind=kind)
