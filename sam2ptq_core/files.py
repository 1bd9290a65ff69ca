"""File helpers every layer uses: content hashes, and directories that appear whole or not at all.

A directory is built in a temp sibling ``.<name>.tmp-<host>-<pid>-<rand>`` and renamed into place. A writer killed
with SIGKILL leaves its temp sibling behind; the next ``atomic_dir`` in the same folder removes every temp sibling
whose writer (same host, that pid) is gone, and never one of a live writer. A full disk is reported as such (torch
reports it in its own words), with what had been written and what is left.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_sha256", "verified", "file_listing", "writer_tag", "writer_gone", "atomic_dir", "sweep_leftovers",
           "dead_leftovers", "DiskFull", "disk_full_reported", "tree_bytes", "evict_least_recent"]

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
_DISK_FULL_WORDS = ("No space left", "unexpected pos", "file write failed", "Disk quota exceeded")


class DiskFull(RuntimeError):
    """The file system filled up while writing; the message names the folder and the sizes."""


_SEEN: dict[tuple[int, int], tuple[int, int, str]] = {}  # (device, inode) → (size, mtime_ns, sha256) hashed here


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, remembered for this process by inode (a rename or hard link keeps it)."""
    st = os.stat(path)  # before reading: a write during hashing changes mtime and invalidates the entry
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    _SEEN[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns, h.hexdigest())
    return h.hexdigest()


def touch(p: Path) -> None:
    """Mark ``p`` recently used (mtime: what an LRU eviction reads) without losing this process's hash of it: the
    file's bytes did not change, so a memo of them is moved to the new mtime."""
    before = os.stat(p)
    os.utime(p)
    memo = _SEEN.get((before.st_dev, before.st_ino))
    if memo is not None and memo[:2] == (before.st_size, before.st_mtime_ns):
        _SEEN[(before.st_dev, before.st_ino)] = (before.st_size, os.stat(p).st_mtime_ns, memo[2])


def verified(p: Path, info: dict) -> bool:
    """Size and sha256 match ``info``. Each file is hashed once per process: later checks trust an unchanged size
    and mtime of the same inode (a new process, e.g. a resumed run, hashes everything again)."""
    st = p.stat()
    if st.st_size != info["size"]:
        return False
    if _SEEN.get((st.st_dev, st.st_ino)) == (st.st_size, st.st_mtime_ns, info["sha256"]):
        return True
    return file_sha256(p) == info["sha256"]


def file_listing(d: Path, exclude: str = "manifest.json") -> dict[str, dict]:
    """{relative name: {size, sha256}} of every file below ``d`` but ``exclude``."""
    return {str(p.relative_to(d)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != exclude}


def writer_tag() -> str:
    """``<host>-<pid>-<rand>``: names what this process writes, so leftovers of dead writers can be told apart."""
    return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def writer_gone(name: str) -> bool:
    """``name`` is ``.<target>.(tmp|old)-<host>-<pid>-<rand>``: True when that host is us and the pid is dead."""
    try:
        host, pid, _ = name.rsplit(".", 1)[1].split("-", 1)[1].rsplit("-", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != _HOST:
        return False  # another machine's writer (shared file system): not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dead_leftovers(folder: Path) -> list[Path]:
    """The temp siblings in ``folder`` whose writers are gone."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)
            and writer_gone(p.name)] if folder.is_dir() else []


def sweep_leftovers(folder: Path) -> list[Path]:
    """Remove the temp siblings in ``folder`` whose writers are gone; returns what was removed."""
    gone = dead_leftovers(folder)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def tree_bytes(d: Path) -> int:
    """Bytes of the files below ``d``, skipping what another process removes meanwhile (0 when ``d`` is gone)."""
    total = 0
    for top, _, names in os.walk(d):  # os.walk skips folders that vanish while it walks
        for n in names:
            try:
                total += os.lstat(os.path.join(top, n)).st_size
            except FileNotFoundError:
                continue
    return total


def evict_least_recent(entries: list[Path], used: Callable[[], int], limit: int,
                       spare: Callable[[Path, float], bool] = lambda path, mtime: False,
                       remove: Callable[[Path], None] | None = None) -> list[Path]:
    """A bounded cache's eviction: remove ``entries`` (files or folders), least recently used first (oldest mtime:
    a cache touches what it uses with ``os.utime``), until ``used()`` ≤ ``limit`` bytes; ``spare(path, mtime)``
    keeps an entry (one in use); ``remove`` replaces the deletion (a dry run). Another process may evict at the
    same time. Returns what was removed."""
    stamped = []
    for p in entries:
        try:
            stamped.append((p.stat().st_mtime, p))
        except FileNotFoundError:
            continue
    total, removed = used(), []
    for mtime, p in sorted(stamped, key=lambda t: t[0]):
        if total <= limit:
            break
        if spare(p, mtime):
            continue
        if remove is not None:
            remove(p)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        total = used()
    return removed


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, (OSError, RuntimeError)) and any(w in str(e) for w in _DISK_FULL_WORDS)


def _drop_frames(e: BaseException | None) -> None:
    """Free the locals of the frames of a failed write and of every error it was raised while handling (their
    tracebacks still print). DiskFull keeps them as its context, and torch.save's frame holds its writer, whose
    file (deleted with the temp directory) keeps its blocks allocated while the writer lives: the disk would stay
    full for the rest of the process, and the run's log file on it would fail too."""
    import traceback
    while e is not None:
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


@contextmanager
def disk_full_reported(folder: Path, written: Path):
    """Turn any form of "disk full" raised in the block (ENOSPC, torch's ``enforce fail … file write failed``) into
    one DiskFull line naming ``folder``, what had been written into ``written`` and what is free."""
    full = None
    try:
        yield
    except Exception as e:
        if not _is_disk_full(e):
            raise
        full = f"{_size(written) / 2**20:.1f} MiB" if written.is_dir() else "nothing"
        _drop_frames(e)
    if full is not None:
        free = shutil.disk_usage(folder).free
        raise DiskFull(f"no space left on {folder.resolve()}: {full} were written before the disk filled "
                       f"({free / 2**20:.1f} MiB free now); free space or point it at a larger disk and rerun: "
                       f"finished stages are kept")


def atomic_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory in a temp sibling and swap it into ``target``; the old one survives a failed build."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target.parent)
    tag = writer_tag()
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        with disk_full_reported(target.parent, tmp):
            build(tmp)
        old = target.parent / f".{target.name}.old-{tag}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
