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
    st = StageStore(tmp_path)
    m, _ = st.run("s", "k3", {}, {}, _write)
    m.path("a.bin").write_bytes(b"hellO")  # same size, different content
    with caplog.at_level("WARNING"):
        assert st.get("s", "k3") is None
    assert "checksum mismatch" in caplog.text
    m, reused = st.run("s", "k3", {}, {}, _write)
    assert not reused and m.path("a.bin").read_bytes() == b"hello"
    m.path("a.bin").unlink()
    m, reused = st.run("s", "k3", {}, {}, _write)
    assert not reused


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
