"""The user-facing output tree (the spec's layout), written atomically and reused when it is already up to date.

``stages.json`` records each stage's key, whether it was reused and its seconds, plus an ``export`` entry with the
tree's own key (upstream stage keys + the resolved config less ``cache``) and the size and sha256 of every file. A rerun
whose key matches and whose files all verify only rewrites ``stages.json``; anything else rebuilds the tree in a
temp directory and swaps it in, so a failed export leaves the previous tree intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..files import atomic_dir, file_listing, verified

__all__ = ["EXPORT_VERSION", "export_key", "tree_is_current", "write_tree", "record_stages"]

EXPORT_VERSION = 2  # 2: onnx/ holds the video encoder


def export_key(config: dict, stage_keys: dict[str, str]) -> str:
    """The tree's key: the stages' keys and the run's config, less ``cache`` (where the stages were kept changes
    nothing in the tree but ``config.yaml``'s ``cache`` lines): a worker reusing a shared store's stages finds another
    worker's tree of the same run current instead of downloading the stages' files to write it again."""
    config = {k: v for k, v in config.items() if k != "cache"}
    payload = json.dumps({"version": EXPORT_VERSION, "config": config, "stages": stage_keys}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def tree_is_current(target: Path, key: str) -> bool:
    """The tree at ``target`` was written for ``key`` and every file it lists is there, unchanged."""
    try:
        exp = json.loads((target / "stages.json").read_text())["export"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if exp.get("key") != key or not exp.get("files"):
        return False
    for name, info in exp["files"].items():
        p = target / name
        if not p.is_file() or not verified(p, info):
            return False
    return True


def record_stages(target: Path, stages: dict, files: dict | None = None) -> None:
    """(Re)write ``stages.json`` in one step; ``files`` defaults to the listing already recorded there."""
    if files is None:
        files = json.loads((target / "stages.json").read_text())["export"]["files"]
    stages = {**stages, "export": {**stages["export"], "files": files}}
    part = target / ".stages.json.part"
    part.write_text(json.dumps(stages, indent=1))
    os.replace(part, target / "stages.json")


def write_tree(target: Path, write_files: Callable[[Path], None], copy_from: list[Path], stages: dict) -> None:
    """Build the tree: ``write_files(tmp)`` writes the model files, ``copy_from`` are copied in (the report),
    then the listing and ``stages.json``; the finished directory replaces ``target`` at once."""
    def build(tmp: Path) -> None:
        write_files(tmp)
        for f in copy_from:
            shutil.copy2(f, tmp / f.name)
        record_stages(tmp, stages, file_listing(tmp, exclude="stages.json"))
    atomic_dir(target, build)
