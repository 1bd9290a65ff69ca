"""The stage store: content-keyed, atomic, verified stage directories .

Layout: ``<root>/<stage>/<key>/`` holding the stage's files and ``manifest.json``. A stage is built in a temp dir
beside it; ``manifest.json`` (stage, key, config slice, upstream keys, code version, files with size + sha256,
timings) is written last and the temp dir is renamed into place in one step, so a dir without a valid manifest
never appears. Reuse checks that every listed file is there at its size (a missing or truncated file: the stage is
deleted with a warning and rebuilt); a file's sha256 is checked when a stage first opens it (``Manifest.fetch``), so
a fully cached rerun reads no stage's bytes (the captured activations are 363 MB for tiny, about 4 GB for large).
Other bytes at the same size, found there, delete the stage and stop the run with one line (``CorruptStage``); the
next run rebuilds it.

Concurrency: one ``filelock`` per key. It is an OS file lock (flock), released by the kernel when its holder dies,
so a ``kill -9`` never leaves a stuck lock; a second run waits and then reuses the first run's result.

diskcache holds only what may be evicted without losing work: the per-image preprocessing cache and the run ledger
(an index of runs and their metrics that can always be rebuilt from the stage dirs and output trees).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from filelock import FileLock

from .. import __version__
from ..config import canonical_json
from ..files import atomic_dir, file_listing, verified

__all__ = ["StageStore", "StageError", "CorruptStage", "Manifest", "stage_key", "manifest_body"]

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage failed, or a stage's files cannot be used; the message starts with the stage name."""


class CorruptStage(StageError):
    """A file of a reused stage failed its checksum when a stage opened it: the stage was deleted (an object store:
    its manifest), the next run rebuilds it. A StageError: one line on the console, wherever it is opened."""


def stage_key(stage: str, version: int, config_slice: Any, upstream: dict[str, str]) -> str:
    """sha256 over (stage, algorithm version, canonical config slice, upstream keys)."""
    payload = canonical_json({"stage": stage, "version": version, "config": config_slice, "upstream": upstream})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A finished stage: its manifest ``data`` and where its files are. ``fetch(name)``, when a store gives one,
    brings one file into ``dir`` on first use (the object store downloads and verifies it then), so reusing a stage
    costs no file that nothing opens."""
    stage: str
    key: str
    dir: Path
    data: dict
    fetch: Callable[[str], Path] | None = field(default=None, compare=False, repr=False)

    @property
    def meta(self) -> dict:
        return self.data.get("meta", {})

    def path(self, name: str) -> Path:
        return self.fetch(name) if self.fetch is not None else self.dir / name


def manifest_body(stage: str, key: str, config_slice: Any, upstream: dict[str, str], meta: dict,
                  t0: float) -> dict:
    return {"stage": stage, "key": key, "config": config_slice, "upstream": upstream, "code_version": __version__,
            "meta": meta, "timing": {"started": t0, "seconds": round(time.time() - t0, 3)}}


def _write_manifest(tmp: Path, body: dict) -> None:
    body = {**body, "files": file_listing(tmp)}
    (tmp / "manifest.json.part").write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp / "manifest.json.part", tmp / "manifest.json")


class StageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:24]

    def get(self, stage: str, key: str) -> Manifest | None:
        """The manifest of a finished stage, or None: every listed file present at its size, its sha256 checked when
        first opened (``Manifest.path``). A stage found corrupt here is removed (recomputed)."""
        d = self.stage_dir(stage, key)
        mf = d / "manifest.json"
        if not mf.is_file():
            return None
        problem = None
        try:
            data = json.loads(mf.read_text())
            if data.get("key") != key:
                problem = "manifest key mismatch"
            for name, info in data.get("files", {}).items():
                p = d / name
                if problem:
                    break
                if not p.is_file():
                    problem = f"missing file {name}"
                elif p.stat().st_size != info["size"]:
                    problem = f"size mismatch in {name}"
        except (OSError, ValueError) as e:
            problem = f"unreadable manifest ({e})"
        if problem:
            self._drop(stage, key, problem)
            return None
        return Manifest(stage, key, d, data, fetch=lambda name: self._opened(stage, key, data, name))

    def _opened(self, stage: str, key: str, data: dict, name: str) -> Path:
        """``name`` in the stage's directory, its sha256 checked (once per process and file). On a mismatch the
        stage is deleted under its lock, unless it was rebuilt since ``data`` was read (another run found the same
        fault): that copy is kept."""
        d = self.stage_dir(stage, key)
        p, info = d / name, data.get("files", {}).get(name)
        if info is None or verified(p, info):
            return p
        with FileLock(str(d) + ".lock"):
            try:
                rebuilt = json.loads((d / "manifest.json").read_text()) != data
            except (OSError, ValueError):
                rebuilt = False
            if not rebuilt:
                self._drop(stage, key, f"checksum mismatch in {name}")
        done = "another run has rebuilt it meanwhile" if rebuilt else "it was deleted"
        raise CorruptStage(f"stage {stage} {key[:12]} in {self.root} is corrupt (checksum mismatch in {name}): "
                           f"{done}; run again to rebuild that stage")

    def _drop(self, stage: str, key: str, problem: str) -> None:
        log.warning("stage %s %s is corrupt (%s): deleting and recomputing", stage, key[:12], problem)
        shutil.rmtree(self.stage_dir(stage, key), ignore_errors=True)

    def run(self, stage: str, key: str, config_slice: Any, upstream: dict[str, str],
            build: Callable[[Path], dict | None]) -> tuple[Manifest, bool]:
        """Return (manifest, reused). ``build(tmp_dir)`` writes the files and returns extra manifest ``meta``."""
        d = self.stage_dir(stage, key)
        d.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d) + ".lock"):
            found = self.get(stage, key)
            if found is not None:
                return found, True
            t0 = time.time()

            def _build(tmp: Path) -> None:
                _write_manifest(tmp, manifest_body(stage, key, config_slice, upstream, build(tmp) or {}, t0))
            atomic_dir(d, _build)
            return self.get(stage, key), False

    def preprocess_cache(self) -> diskcache.Cache:
        """Evictable cache of resized uint8 images keyed by (file sha256, size)."""
        return diskcache.Cache(str(self.root / "diskcache" / "preprocess"), size_limit=4 << 30)

    def ledger(self) -> diskcache.Index:
        """Run ledger: run id → {config family, stage keys, metrics, time}. Rebuildable, never the source of truth:
        a ledger that cannot be read (a damaged database) is deleted with a warning and starts empty, so every
        family starts a new baseline."""
        import sqlite3
        path = self.root / "diskcache" / "ledger"
        try:
            index = diskcache.Index(str(path))
            list(index.keys())
            return index
        except (sqlite3.DatabaseError, ValueError, EOFError) as e:  # unreadable database or record
            log.warning("run ledger %s is corrupt (%s): deleting it; every family starts a new baseline", path,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            shutil.rmtree(path, ignore_errors=True)
            return diskcache.Index(str(path))
