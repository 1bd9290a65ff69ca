"""The stage store on an object store or any fsspec URL (``s3://``, ``gs://``, ``az://``, ``file://``).

Layout under the URL: ``<stage>/<key[:24]>/<writer>/<file>`` for a stage's files and
``<stage>/<key[:24]>/manifest.json`` for its manifest, which names the writer. A stage is built in a local temp
directory, its files are uploaded under a prefix of their own (``<host>-<pid>-<rand>``), and only then the manifest
is created with an exclusive write (fsspec ``mode="create"``: S3 ``If-None-Match: *``, ``O_EXCL`` for local files). So:

- a stage becomes visible only when its manifest exists, after all of its files;
- a crashed or interrupted writer leaves no manifest, so no visible stage (its orphaned prefix is harmless);
- two writers of one key can never mix: the first manifest wins, the loser deletes its prefix and reuses the winner's;
- a reader trusts a manifest only when one listing of its writer's prefix holds every file it lists at its size, and
  each file's sha256 when the file is first opened; a stage proven corrupt loses its manifest: at reuse (a missing or
  truncated object) it is recomputed at once, at open (same size, other bytes) the run stops with one line and the
  next run recomputes it.

Files are read through a bounded local cache keyed by sha256 (``cache.local``), so a worker downloads each artifact
once, and only when a stage opens it: reusing a stage costs its manifest and one listing, so a fully cached run on a
worker with an empty cache downloads only what its remaining work reads (the captured activations, hundreds of MB,
stay in the bucket). A stage is presented to the artifacts as a local directory of hard links into that cache,
filled file by file (``Manifest.fetch``). Credentials and
endpoints come from each cloud's standard environment (e.g. ``AWS_ENDPOINT_URL`` for MinIO or Ceph).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import diskcache
from filelock import FileLock

from ..files import disk_full_reported, evict_least_recent, file_listing, touch, verified, writer_tag
from .store import CorruptStage, Manifest, manifest_body

__all__ = ["ObjectStageStore", "SharedLedger", "CorruptStage", "is_url"]

log = logging.getLogger(__name__)


VIEW_GRACE_S = 600  # a view touched this recently may be read by a running stage: never pruned


class _Corrupt(ValueError):
    """A fully read object proves the stage is broken (checksum mismatch, a listed object missing, a manifest that
    is not JSON): only this may delete anything shared."""


def is_url(root: str) -> bool:
    return "://" in str(root)


class _RetryNotice(logging.Filter):
    """s3fs says it retries only at DEBUG: turn that into a warning (at most one per 10 s) so a slow or hung endpoint
    is visible while the run waits; drop s3fs's other DEBUG chatter as before."""

    def __init__(self):
        super().__init__()
        self.last = 0.0
        self.timeout = 60.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        msg = record.getMessage()
        if msg.startswith("Retryable error") and time.time() - self.last > 10:
            self.last = time.time()
            from .progress import run_logger
            run_logger().warning("S3 request failed (%s); retrying — waiting on the endpoint (read timeout %g s, "
                                 "3 attempts per request)", msg.split(": ", 1)[-1][:160], self.timeout)
        return False


_RETRY_NOTICE = _RetryNotice()


def _notice_s3_retries(timeout: float) -> None:
    s3log = logging.getLogger("s3fs")
    _RETRY_NOTICE.timeout = timeout
    if _RETRY_NOTICE not in s3log.filters:
        s3log.addFilter(_RETRY_NOTICE)
    if s3log.getEffectiveLevel() > logging.DEBUG:
        s3log.setLevel(logging.DEBUG)  # records reach the filter, which passes none of the DEBUG ones on


def url_fs(url: str, timeout: float = 60.0):
    """(filesystem, path) of ``url``. S3 requests get a connect timeout (≤ 10 s), a read timeout of ``timeout`` s and
    3 attempts, so an endpoint that stops answering fails the run with one line within about 3·(10 + timeout) s
    instead of blocking it forever."""
    import fsspec
    opts = {}
    if url.split("://", 1)[0] in ("s3", "s3a"):
        opts["config_kwargs"] = {"connect_timeout": min(10.0, timeout), "read_timeout": timeout,
                                 "retries": {"max_attempts": 3, "mode": "standard"}}
        _notice_s3_retries(timeout)
    return fsspec.core.url_to_fs(url, **opts)


class ObjectStageStore:
    """Same interface as ``StageStore`` (``get``, ``run``, ``preprocess_cache``, ``ledger``) on an fsspec URL."""

    def __init__(self, url: str, local: str | Path, max_cache_bytes: int = 50 << 30,
                 lease: Callable[[str, str], AbstractContextManager] | None = None, timeout: float = 60.0):
        """``lease(stage, key)``: held while a stage is built, so one machine computes it and the others wait
        (``leases.stage_lease``, a Prefect global concurrency limit); without it machines may compute a stage
        twice, and the exclusive manifest write keeps one whole result. ``timeout``: ``url_fs``."""
        self.url = str(url).rstrip("/")
        self.fs, self.root = url_fs(self.url, timeout)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.folders = bool({"file", "local"} & set(protocols))  # a file system that needs its folders made
        self.local = Path(local).expanduser()
        self.objects = self.local / "objects"
        for d in (self.objects, self.local / "views", self.local / "staging", self.local / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        self.max_cache_bytes = max_cache_bytes
        self.lease = lease or (lambda stage, key: nullcontext())

    def _kdir(self, stage: str, key: str) -> str:
        return f"{self.root}/{stage}/{key[:24]}"

    def _fetch(self, remote: str, info: dict) -> Path:
        """The verified local copy of ``remote`` in the sha256-keyed cache, downloading it at most once."""
        obj = self.objects / info["sha256"]
        if obj.is_file() and verified(obj, info):
            touch(obj)  # recently used: evicted last (still hashed once per process)
            return obj
        part = self.objects / f".{info['sha256']}.{uuid.uuid4().hex[:8]}.part"
        try:
            try:
                self.fs.get_file(remote, str(part))
            except FileNotFoundError:
                raise _Corrupt(f"listed object {remote} is missing") from None
            if not verified(part, info):
                raise _Corrupt(f"checksum mismatch in {remote}")
            os.replace(part, obj)  # same inode: not hashed again
        finally:
            part.unlink(missing_ok=True)
        self._evict(keep=obj)
        return obj

    def _evict(self, keep: Path | None = None) -> None:
        """Bound the local cache (``max_cache_bytes``) over everything it holds: cached objects, the files this
        worker built and published (linked in as objects), and views. A view's files are hard links to objects, so
        space comes back only when both go: views untouched for ``VIEW_GRACE_S`` (not being read by a stage) go
        first, least recently used first, then objects. Other processes may evict concurrently."""
        views = self.local / "views"

        def used() -> int:
            seen, total = set(), 0
            for p in (*self.objects.iterdir(), *views.rglob("*")):
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                if p.is_file() and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
            return total
        if used() <= self.max_cache_bytes:
            return
        now = time.time()
        # names starting with "." are views or downloads in progress
        done_views = [v for s in views.iterdir() if s.is_dir() for v in s.iterdir()
                      if v.is_dir() and not v.name.startswith(".")]
        evict_least_recent(done_views, used, self.max_cache_bytes,
                           spare=lambda v, mtime: now - mtime <= VIEW_GRACE_S)
        evict_least_recent([p for p in self.objects.iterdir() if not p.name.startswith(".")], used,
                           self.max_cache_bytes, spare=lambda p, mtime: p == keep)

    def _view(self, stage: str, key: str, data: dict) -> Path:
        """The stage's local directory (its ``manifest.json`` only: files are linked in as they are opened), one per
        published copy (``<key24>.<writer>``): a copy rebuilt by another writer never shares links with this one."""
        view = self.local / "views" / stage / f"{key[:24]}.{data['writer']}"
        if not (view / "manifest.json").is_file():  # a published copy's manifest never changes: written once
            view.mkdir(parents=True, exist_ok=True)
            tmp = view / f".manifest.json.{uuid.uuid4().hex[:8]}"
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, view / "manifest.json")
        return view

    def _file(self, stage: str, key: str, data: dict, view: Path, name: str) -> Path:
        """``view/name``, a hard link to the verified cached copy of the stage's file, downloaded on first use. A name
        the manifest does not list is returned as is (absent, as in a local stage)."""
        info = data.get("files", {}).get(name)
        dst = view / name
        if info is None:
            return dst
        kdir = self._kdir(stage, key)
        for attempt in range(3):
            try:  # another process may evict the cached copy, or the view, between fetch and link: again
                obj = self._fetch(f"{kdir}/{data['writer']}/{name}", info)
                if view.is_dir():
                    os.utime(view)  # in use: spared by eviction for VIEW_GRACE_S
                if dst.is_file() and os.path.samefile(dst, obj):
                    return dst
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}"
                os.link(obj, tmp)
                os.replace(tmp, dst)  # a link to an evicted copy of the same bytes is replaced whole
                return dst
            except FileNotFoundError:
                if attempt == 2:
                    raise
            except _Corrupt as e:
                done = ("its manifest was deleted" if self._drop(stage, key, e, data["writer"]) else
                        "another worker has rebuilt it meanwhile")
                raise CorruptStage(f"stage {stage} {key[:12]} in {self.url} is corrupt ({e}): {done}; run again to "
                                   "rebuild that stage") from None
        raise AssertionError("unreachable")

    def _check_listing(self, stage: str, key: str, data: dict) -> None:
        """One listing of the writer's prefix: every file the manifest lists is there at its size (a missing or
        truncated upload is found at reuse, without downloading; the sha256 is checked when a file is opened)."""
        prefix = f"{self._kdir(stage, key)}/{data['writer']}"
        self.fs.invalidate_cache(prefix)
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            found = {}
        sizes = {p.rstrip("/").split(f"/{data['writer']}/", 1)[-1]: i.get("size") for p, i in found.items()}
        for name, info in data.get("files", {}).items():
            if name not in sizes:
                raise _Corrupt(f"listed object {prefix}/{name} is missing")
            if sizes[name] != info["size"]:
                raise _Corrupt(f"size mismatch in {prefix}/{name} ({sizes[name]} bytes, {info['size']} listed)")

    def _drop(self, stage: str, key: str, e: Exception, writer: str | None = None) -> bool:
        """Delete a stage proven corrupt (its manifest: the stage is recomputed); a local error never gets here.
        ``writer``: the copy found corrupt; a manifest naming another writer (the stage was rebuilt meanwhile by a
        worker that found the same fault) is kept. S3 has no conditional delete here: the re-read narrows that race
        to the moment between it and the delete. Returns whether the manifest was deleted."""
        mpath = f"{self._kdir(stage, key)}/manifest.json"
        if writer is not None:
            try:
                if json.loads(self.fs.cat_file(mpath)).get("writer") != writer:
                    log.warning("stage %s %s: the copy of writer %s is corrupt (%s); it was rebuilt meanwhile",
                                stage, key[:12], writer, str(e).splitlines()[0])
                    return False
            except (FileNotFoundError, ValueError):
                pass  # gone already, or not JSON: delete (a manifest that is not JSON is corrupt too)
        log.warning("stage %s %s in %s is corrupt (%s): deleting and recomputing", stage, key[:12], self.url,
                    str(e).splitlines()[0])
        try:
            self.fs.rm(mpath)
        except FileNotFoundError:
            pass  # another worker dropped it first
        return True

    def get(self, stage: str, key: str) -> Manifest | None:
        """The manifest of a finished stage, or None: its files listed at their sizes, each downloaded and verified
        when first opened (``Manifest.path``). A stage proven corrupt loses its manifest (recomputed)."""
        mpath = f"{self._kdir(stage, key)}/manifest.json"
        try:
            raw = self.fs.cat_file(mpath)
        except FileNotFoundError:
            return None
        data = None
        try:
            try:
                data = json.loads(raw)
            except ValueError as e:
                raise _Corrupt(f"manifest is not JSON: {e}") from None
            if not isinstance(data, dict) or data.get("key") != key or "writer" not in data:
                raise _Corrupt("manifest does not belong to this key")
            self._check_listing(stage, key, data)
        except _Corrupt as e:  # proven broken: the stage is recomputed (a local error never deletes it)
            self._drop(stage, key, e, data.get("writer") if isinstance(data, dict) else None)
            return None
        view = self._view(stage, key, data)
        return Manifest(stage, key, view, data, fetch=lambda name: self._file(stage, key, data, view, name))

    def run(self, stage: str, key: str, config_slice: Any, upstream: dict[str, str],
            build: Callable[[Path], dict | None]) -> tuple[Manifest, bool]:
        """Return (manifest, reused). Builds locally, uploads under a writer prefix, publishes the manifest last.
        A published stage is reused without taking any lock; otherwise the lease (across machines) and a flock
        (across processes of this machine) are taken and the store is looked at again before building."""
        found = self.get(stage, key)
        if found is not None:
            return found, True
        with self.lease(stage, key), FileLock(str(self.local / "locks" / f"{stage}-{key[:24]}.lock")):
            found = self.get(stage, key)
            if found is not None:
                return found, True
            t0 = time.time()
            writer = writer_tag()
            tmp = self.local / "staging" / f"{stage}-{key[:24]}-{writer}"
            tmp.mkdir(parents=True)
            kdir = self._kdir(stage, key)
            try:
                with disk_full_reported(self.local / "staging", tmp):  # cache.local filled up: one line
                    meta = build(tmp) or {}
                body = manifest_body(stage, key, config_slice, upstream, meta, t0)
                files = file_listing(tmp)
                for name in files:
                    dst = f"{kdir}/{writer}/{name}"
                    if self.folders:
                        self.fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(str(tmp / name), dst)
                for name, info in files.items():  # what was just written is cached: no download back, no rehash
                    obj = self.objects / info["sha256"]
                    if not obj.exists():
                        os.link(tmp / name, obj)
                self._evict()  # what this worker built counts against cache.local_max_gb too
                manifest = json.dumps({**body, "writer": writer, "files": files}, indent=1, sort_keys=True)
                try:
                    self.fs.pipe_file(f"{kdir}/manifest.json", manifest.encode(), mode="create")
                    won = True
                except FileExistsError:  # another machine published this key first: keep its stage
                    won = False
                    self.fs.rm(f"{kdir}/{writer}", recursive=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            m = self.get(stage, key)
            if m is None:
                raise RuntimeError(f"stage {stage} {key[:12]} was published to {self.url} but does not verify")
            return m, not won

    def preprocess_cache(self) -> diskcache.Cache:
        """Evictable per-worker cache of resized images (local)."""
        return diskcache.Cache(str(self.local / "diskcache" / "preprocess"), size_limit=4 << 30)

    def ledger(self) -> SharedLedger:
        """The run ledger in the shared store, so every worker compares with the same baseline."""
        return SharedLedger(self.fs, f"{self.root}/ledger", self.folders)


class SharedLedger:
    """Run ledger on the object store, one JSON object per family (``<root>/ledger/<sha16(family)>.json``), with the
    mapping interface the regression guard uses. A lost worker disk loses nothing. Two runs of one family finishing
    in the same instant can race on the read-modify-write; the later write wins and the other run's record is lost
    (the guard then compares with the remaining best run)."""

    def __init__(self, fs, root: str, folders: bool):
        self.fs, self.root, self.folders = fs, root, folders

    def _path(self, family: str) -> str:
        import hashlib
        return f"{self.root}/{hashlib.sha256(family.encode()).hexdigest()[:16]}.json"

    def get(self, family: str, default=None):
        try:
            return self._read(self._path(family))["runs"]
        except FileNotFoundError:
            return default

    def _read(self, path: str) -> dict:
        """One family's record; a record that is not valid JSON is deleted with a warning (a lost ledger entry only
        starts a new baseline) and reads as missing."""
        raw = self.fs.cat_file(path)
        try:
            d = json.loads(raw)
            if not isinstance(d, dict) or not isinstance(d.get("runs"), list) or "family" not in d:
                raise ValueError("not a ledger record")
            return d
        except ValueError as e:
            log.warning("run ledger record %s is corrupt (%s): deleting it; that family starts a new baseline",
                        path, str(e).splitlines()[0])
            self.fs.rm(path)
            raise FileNotFoundError(path) from None

    def __getitem__(self, family: str):
        runs = self.get(family)
        if runs is None:
            raise KeyError(family)
        return runs

    def __setitem__(self, family: str, runs: list) -> None:
        if self.folders:
            self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(self._path(family), json.dumps({"family": family, "runs": runs}, indent=1).encode())

    def keys(self) -> list[str]:
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if n.endswith(".json"):
                try:
                    out.append(self._read(n)["family"])
                except FileNotFoundError:
                    continue
        return out
