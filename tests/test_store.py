import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from filelock import FileLock, Timeout

from sam2ptq_core.pipeline.store import StageStore, stage_key


def _write(tmp, name="a.bin", data=b"hello"):
    (tmp / name).write_bytes(data)
    return {"n": 1}


def test_key_depends_on_every_part():
    k = stage_key("s", 1, {"a": 1}, {"up": "x"})
    assert k == stage_key("s", 1, {"a": 1}, {"up": "x"})
    assert len({k, stage_key("t", 1, {"a": 1}, {"up": "x"}), stage_key("s", 2, {"a": 1}, {"up": "x"}),
                stage_key("s", 1, {"a": 2}, {"up": "x"}), stage_key("s", 1, {"a": 1}, {"up": "y"})}) == 5


def test_build_then_reuse(tmp_path):
    st = StageStore(tmp_path)
    calls = []
    m, reused = st.run("s", "k1", {}, {}, lambda t: calls.append(1) or _write(t))
    assert not reused and m.path("a.bin").read_bytes() == b"hello"
    man = json.loads((m.dir / "manifest.json").read_text())
    assert man["files"]["a.bin"]["size"] == 5 and man["meta"] == {"n": 1}
    m2, reused = st.run("s", "k1", {}, {}, lambda t: calls.append(1) or _write(t))
    assert reused and calls == [1]


def test_crash_mid_build_leaves_nothing_visible(tmp_path):
    st = StageStore(tmp_path)

    def boom(t):
        (t / "first.bin").write_bytes(b"x")
        raise RuntimeError("killed between files")
    with pytest.raises(RuntimeError):
        st.run("s", "k2", {}, {}, boom)
    assert st.get("s", "k2") is None
    assert [p.name for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock")] == []


def test_corrupt_or_missing_file_is_recomputed(tmp_path, caplog):
    """A missing or truncated file is found at reuse (rebuilt at once); other bytes at the same size when a stage
    opens the file: the stage is deleted, one StageError line, and the next run rebuilds it."""
    from sam2ptq_core.pipeline.store import CorruptStage, StageError
    st = StageStore(tmp_path)
    m, _ = st.run("s", "k3", {}, {}, _write)
    m.path("a.bin").write_bytes(b"hellO")  # same size, different content
    m, reused = st.run("s", "k3", {}, {}, lambda t: pytest.fail("rebuilt before anything was opened"))
    assert reused and issubclass(CorruptStage, StageError)
    with caplog.at_level("WARNING"), pytest.raises(CorruptStage, match=r"stage s k3 in .* is corrupt \(checksum mis"):
        m.path("a.bin")
    assert "checksum mismatch" in caplog.text and not m.dir.exists()
    m, reused = st.run("s", "k3", {}, {}, _write)
    assert not reused and m.path("a.bin").read_bytes() == b"hello"
    m.path("a.bin").write_bytes(b"hell")  # truncated
    m, reused = st.run("s", "k3", {}, {}, _write)
    assert not reused and "size mismatch in a.bin" in caplog.text
    m.path("a.bin").unlink()
    m, reused = st.run("s", "k3", {}, {}, _write)
    assert not reused


def test_reuse_reads_no_file_until_it_is_opened(tmp_path, monkeypatch):
    """Issue 28 item 2: a cached rerun (a new process) hashed every file of every reused stage (0.7 s of the demo's
    8.2 s; about 4 GB of captured activations for large); now a file is hashed when a stage opens it, once."""
    from sam2ptq_core import files
    st = StageStore(tmp_path)
    st.run("s", "k4", {}, {}, lambda t: _write(t, "acts.pt", b"x" * 100_000) and _write(t, "small.json", b"{}"))
    monkeypatch.setattr(files, "_SEEN", {})  # a new process
    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    m, reused = st.run("s", "k4", {}, {}, lambda t: pytest.fail("rebuilt"))
    assert reused and hashed == []
    assert m.path("small.json").read_bytes() == b"{}" and m.path("small.json").is_file() and hashed == ["small.json"]


def test_concurrent_runs_build_once(tmp_path):
    st = StageStore(tmp_path)
    calls = []

    def slow(t):
        calls.append(1)
        time.sleep(0.5)
        return _write(t)
    results = []
    threads = [threading.Thread(target=lambda: results.append(st.run("s", "k4", {}, {}, slow)[1])) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == [1] and sorted(results) == [False, True]


def test_lock_of_killed_holder_does_not_block(tmp_path):
    st = StageStore(tmp_path)
    lock = str(st.stage_dir("s", "k5")) + ".lock"
    (tmp_path / "s").mkdir()
    code = (f"from filelock import FileLock; import time; lk = FileLock({lock!r}); lk.acquire(); "
            f"print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(Timeout):
        FileLock(lock, timeout=0.2).acquire()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.time()
    m, reused = st.run("s", "k5", {}, {}, _write)
    assert not reused and time.time() - t0 < 5
