"""``quantize_sam2.py gc``: remove what no manifest references and no live writer owns.

Left behind by interrupted or failed work (the stages themselves are never touched):
- in an object store: writer prefixes under ``<stage>/<key>/`` that the key's manifest does not name (an upload cut
  by Ctrl-C or a dropped connection, the losing copy of a race, the files of a stage deleted as corrupt), once their
  newest object is older than ``older_than_s`` (a writer on another machine may still be uploading);
- in ``cache.local`` (this machine): staging folders and sequential hidden states of dead processes, unfinished
  views and downloads older than an hour;
- in a local stage store: temp siblings of dead writers (``files.sweep_leftovers``);
- in OpenVINO's model cache (``<cache.local or cache.root>/openvino``): dead writers' copies, entries whose compile
  never finished (older than an hour) and the least recently used entries past its bound (``export/model_cache.py``);
- on the Prefect server (when one is configured): ``sam2ptq-*`` lease limits that no run holds (a killed holder's).
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from pathlib import Path

from ..config import RunConfig
from ..files import dead_leftovers, sweep_leftovers, writer_gone

__all__ = ["collect_garbage"]

log = logging.getLogger(__name__)
STALE_LOCAL_S = 3600


def _age(info: dict, now: float) -> float:
    """Seconds since an fsspec entry was last written (local ``mtime``, S3 ``LastModified``, GCS ``updated``)."""
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if isinstance(v, (int, float)):
            return now - float(v)
        if isinstance(v, dt.datetime):
            return now - v.timestamp()
        if isinstance(v, str):
            try:
                return now - dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0  # unknown: treat as new, never delete


def _object_store(cfg: RunConfig, older_than_s: float, dry_run: bool) -> list[str]:
    import json

    from .object_store import url_fs
    fs, root = url_fs(cfg.cache.root, cfg.cache.io_timeout_seconds)
    root = root.rstrip("/")
    now, removed = time.time(), []
    try:
        stage_dirs = fs.ls(root, detail=False)
    except FileNotFoundError:  # nothing stored yet
        return removed
    for stage_dir in stage_dirs:
        name = stage_dir.rstrip("/").rsplit("/", 1)[-1]
        if name == "ledger" or not fs.isdir(stage_dir):
            continue
        for kdir in fs.ls(stage_dir, detail=False):
            if not fs.isdir(kdir):
                continue
            writer = None
            try:
                writer = json.loads(fs.cat_file(f"{kdir.rstrip('/')}/manifest.json")).get("writer")
            except (FileNotFoundError, ValueError):
                pass
            for child in fs.ls(kdir, detail=False):
                leaf = child.rstrip("/").rsplit("/", 1)[-1]
                if leaf == "manifest.json" or leaf == writer or not fs.isdir(child):
                    continue
                infos = fs.find(child, detail=True).values()
                if infos and min(_age(i, now) for i in infos) < older_than_s:
                    continue  # a writer may still be uploading
                removed.append(child)
                if not dry_run:
                    fs.rm(child, recursive=True)
    return removed


def _local(cfg: RunConfig, dry_run: bool) -> list[str]:
    from .object_store import is_url
    from .stages import local_dir
    base, removed, now = local_dir(cfg), [], time.time()

    def rm(p: Path) -> None:
        removed.append(str(p))
        if not dry_run:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if is_url(cfg.cache.root):
        for p in (base / "staging").glob("*") if (base / "staging").is_dir() else []:
            parts = p.name.split("-")  # <stage>-<key24>-<host>-<pid>-<rand>
            if len(parts) == 5 and writer_gone(f".s.tmp-{parts[2]}-{parts[3]}-{parts[4]}"):
                rm(p)
        for p in [*(base / "views").glob("*/.*"), *(base / "views").rglob("*/*/.*"),
                  *(base / "objects").glob(".*.part")]:  # older views in the making, links in the making
            try:
                stale = now - p.stat().st_mtime > STALE_LOCAL_S
            except FileNotFoundError:
                continue  # another process finished or removed it meanwhile
            if stale:
                rm(p)
    else:
        root = Path(cfg.cache.root)
        for d in [root, *(p for p in root.glob("*") if p.is_dir())]:
            removed += [str(p) for p in (dead_leftovers(d) if dry_run else sweep_leftovers(d))]
    tmp = base / "tmp"
    removed += [str(p) for p in (dead_leftovers(tmp) if dry_run else sweep_leftovers(tmp))]
    return removed + _openvino(cfg, dry_run)


def _openvino(cfg: RunConfig, dry_run: bool) -> list[str]:
    from ..export.model_cache import ModelCache
    return [str(p) for p in ModelCache.of_run(cfg.cache).sweep(dry_run)]


def _leases(dry_run: bool) -> list[str]:
    from .leases import prefect_api_configured
    if not prefect_api_configured():
        return []
    from prefect.client.orchestration import get_client
    removed = []
    with get_client(sync_client=True) as client:
        idle, offset = [], 0
        while True:  # the API returns at most 200 a page
            page = client.read_global_concurrency_limits(limit=200, offset=offset)
            idle += [lim.name for lim in page if lim.name.startswith("sam2ptq-") and lim.active_slots == 0]
            if len(page) < 200:
                break
            offset += 200
        for name in idle:
            removed.append(f"concurrency limit {name}")
            if not dry_run:
                client.delete_global_concurrency_limit_by_name(name)
    return removed


def collect_garbage(cfg: RunConfig, older_than_s: float = 24 * 3600, dry_run: bool = False) -> dict[str, list[str]]:
    """What was (with ``dry_run``: would be) removed, by place."""
    from .object_store import is_url
    out = {"store": _object_store(cfg, older_than_s, dry_run) if is_url(cfg.cache.root) else [],
           "local": _local(cfg, dry_run), "leases": _leases(dry_run)}
    for where, items in out.items():
        for it in items:
            log.info("gc %s: %s%s", where, "would remove " if dry_run else "removed ", it)
    return out
