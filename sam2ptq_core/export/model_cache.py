"""OpenVINO's model cache on this machine: a compiled model is kept, so a later compile of the same file takes 0.3 s
instead of 1.3 s (the 1024² tiny encoder on 2 cores; files exported with the position embedding's bicubic Resize
in the graph, before ``sam2.loading.separable_position_embedding``, take minutes).

One entry per file content, float precision and OpenVINO version: ``<dir>/<sha256[:32]>-<precision>-ov<version>/``
holds a copy of the ONNX file (``model.onnx``: OpenVINO keys its cache by the file's path, so the stage's temp file,
the published stage and an output tree share one entry) and, as that entry's ``CACHE_DIR``, OpenVINO's compiled blob.
An entry without a blob is one not compiled yet: "compiling … (first time on this machine)" is said before the
compile. An entry's mtime is its last use; past ``max_bytes`` the least recently used entries go
(``files.evict_least_recent``, the object store's bound), except those used in the last ``GRACE_S``. A folder that
cannot be written is one warning and a compile without the cache.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import CacheCfg
from ..files import dead_leftovers, evict_least_recent, file_sha256, sweep_leftovers, tree_bytes, writer_tag

__all__ = ["ModelCache", "SHARE", "GRACE_S"]

log = logging.getLogger(__name__)
SHARE = 0.1  # of cache.local_max_gb: the OpenVINO cache is bounded beside the stage files' read-through cache
GRACE_S = 600  # an entry used this recently may be compiling in another process: never evicted
STALE_S = 3600  # gc: an entry this old without a compiled blob is an interrupted compile


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam2ptq"


def _version() -> str:
    from importlib.metadata import version
    return version("openvino").split("-")[0]


@dataclass(frozen=True)
class ModelCache:
    """Where OpenVINO keeps compiled models (``dir``), how many bytes it may hold, and where its two messages go
    (``log``; None: this module's logger): the compile notice (info) and the not-writable warning."""
    dir: Path
    max_bytes: int
    log: logging.Logger | None = None

    @classmethod
    def under(cls, local: str | Path, local_max_gb: float, log: logging.Logger | None = None) -> ModelCache:
        """``<local>/openvino``, bounded at ``SHARE`` of ``local_max_gb``."""
        return cls(Path(local).expanduser() / "openvino", int(local_max_gb * SHARE * 2**30), log)

    @classmethod
    def of_run(cls, cache: CacheCfg, log: logging.Logger | None = None) -> ModelCache:
        """A run's cache on this machine: ``openvino/`` in the folder where the run keeps local state, the rule of
        ``pipeline.stages.local_dir`` (which export/ does not import): cache.root for a local root, else
        cache.local (default ``$XDG_CACHE_HOME/sam2ptq``); bounded at ``SHARE`` of cache.local_max_gb."""
        local = cache.root if "://" not in cache.root else cache.local or _user_cache()
        return cls.under(local, cache.local_max_gb, log)

    @classmethod
    def default(cls, log: logging.Logger | None = None) -> ModelCache:
        """``$XDG_CACHE_HOME/sam2ptq/openvino`` (default ``~/.cache``: cache.local's default), at the default bound."""
        return cls.under(_user_cache(), CacheCfg().local_max_gb, log)

    def _log(self) -> logging.Logger:
        return self.log or log

    def prepare(self, path: Path, precision: str, threads: int | None = None) -> Path | None:
        """The entry's copy of ``path`` to compile (its folder is OpenVINO's ``CACHE_DIR``), touched as used; None,
        after one warning, when the cache cannot be written (then compile ``path`` without a cache)."""
        name = f"{file_sha256(path)[:32]}-{precision}" + (f"-t{threads}" if threads else "") + f"-ov{_version()}"
        entry = self.dir / name
        model = entry / "model.onnx"
        try:
            sweep_leftovers(entry)  # copies of killed writers
            if not model.is_file():
                entry.mkdir(parents=True, exist_ok=True)
                tmp = entry / f".model.onnx.tmp-{writer_tag()}"
                try:
                    shutil.copyfile(path, tmp)
                    tmp.replace(model)
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError as e:
            self._log().warning("cannot write OpenVINO's model cache %s (%s): compiling without it, as long every "
                                "time; point cache.local (or cache.root) at a writable folder", self.dir,
                                e.strerror or e)
            return None
        with contextlib.suppress(OSError):  # a read-only cache that holds the model still serves it
            os.utime(entry)  # used now: evicted last
        if not any(entry.glob("*.blob")):
            self._log().info("compiling %s for OpenVINO (first time on this machine; kept in %s "
                             "for later runs) …", Path(path).name, self.dir)
        return model

    def discard(self, entry: Path) -> None:
        """Remove ``entry`` after a failed compile unless it holds a compiled model (another process's)."""
        if not any(entry.glob("*.blob")):
            shutil.rmtree(entry, ignore_errors=True)

    def entries(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if self.dir.is_dir() \
            else []

    def bound(self, keep: Path | None = None, dry_run: bool = False) -> list[Path]:
        """Evict least recently used entries past ``max_bytes`` (not ``keep`` nor those used within ``GRACE_S``);
        returns what was (``dry_run``: would be) removed."""
        now, gone = time.time(), []

        def used() -> int:
            return tree_bytes(self.dir) - (sum(map(tree_bytes, gone)) if dry_run else 0)
        return evict_least_recent(self.entries(), used, self.max_bytes,
                                  spare=lambda p, mtime: p == keep or now - mtime < GRACE_S,
                                  remove=gone.append if dry_run else None)

    def sweep(self, dry_run: bool = False) -> list[Path]:
        """``gc``: copies left by dead writers, entries without a compiled model older than ``STALE_S`` (an
        interrupted compile) and entries past the bound. Returns what was (``dry_run``: would be) removed."""
        now, out = time.time(), []
        for e in self.entries():
            out += dead_leftovers(e) if dry_run else sweep_leftovers(e)
            if not any(e.glob("*.blob")) and now - e.stat().st_mtime > STALE_S:
                out.append(e)
                if not dry_run:
                    shutil.rmtree(e, ignore_errors=True)
        return out + self.bound(dry_run=dry_run)
