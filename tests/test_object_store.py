"""The stage store on a URL (fsspec): manifest last, no mixed stages, verified reads, a read-through cache; and the
pipeline on a real S3-compatible server (moto's standalone server) on loopback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sam2ptq_core.pipeline.object_store import ObjectStageStore
from tests.helpers import REDUCED_CFG, ROOT


def _files(d: Path, data: dict) -> dict:
    for name, payload in data.items():
        (d / name).write_bytes(payload)
    return {"n": len(data)}


def _store(tmp_path: Path, worker: str) -> ObjectStageStore:
    return ObjectStageStore(f"file://{tmp_path / 'bucket'}", tmp_path / worker)


def test_build_publish_reuse(tmp_path):
    st = _store(tmp_path, "w1")
    m, reused = st.run("s", "k" * 30, {"c": 1}, {}, lambda d: _files(d, {"a.bin": b"hello", "b.json": b"{}"}))
    assert not reused and m.path("a.bin").read_bytes() == b"hello" and m.meta == {"n": 2}
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    man = json.loads((kdir / "manifest.json").read_text())
    assert sorted(man["files"]) == ["a.bin", "b.json"] and (kdir / man["writer"] / "a.bin").read_bytes() == b"hello"
    calls = []
    m2, reused = st.run("s", "k" * 30, {}, {}, lambda d: calls.append(1))
    assert reused and not calls and m2.path("a.bin").read_bytes() == b"hello"


def test_another_worker_downloads_each_object_once(tmp_path, monkeypatch):
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"x" * 1000}))
    w2 = _store(tmp_path, "w2")
    got = []
    real = w2.fs.get_file
    monkeypatch.setattr(w2.fs, "get_file", lambda src, dst, **kw: got.append(src) or real(src, dst, **kw))
    for _ in range(3):
        assert w2.get("s", "k" * 30).path("a.bin").read_bytes() == b"x" * 1000
    assert len(got) == 1  # then served from the sha256-keyed cache of worker 2


def _drop_second_upload(st: ObjectStageStore, monkeypatch) -> list[str]:
    """Make the store's second file upload fail as a dropped connection; returns the destinations tried."""
    real, n = st.fs.put_file, []

    def flaky(src, dst, **kw):
        n.append(dst)
        if len(n) == 2:
            raise ConnectionError("connection reset halfway through the upload")
        return real(src, dst, **kw)
    monkeypatch.setattr(st.fs, "put_file", flaky)
    return n


def test_interrupted_upload_leaves_no_visible_stage(tmp_path, monkeypatch):
    st = _store(tmp_path, "w1")
    real = st.fs.put_file
    _drop_second_upload(st, monkeypatch)
    with pytest.raises(ConnectionError):
        st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"1", "b.bin": b"2", "c.bin": b"3"}))
    assert st.get("s", "k" * 30) is None
    assert not (tmp_path / "bucket" / "s" / ("k" * 24) / "manifest.json").exists()
    monkeypatch.setattr(st.fs, "put_file", real)
    m, reused = st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"1", "b.bin": b"2", "c.bin": b"3"}))
    assert not reused and m.path("c.bin").read_bytes() == b"3"


def test_two_writers_never_mix(tmp_path):
    """Worker 2 publishes the same key while worker 1 is building: worker 1 keeps worker 2's stage, whole."""
    w1, w2 = _store(tmp_path, "w1"), _store(tmp_path, "w2")

    def slow_build(d):
        w2.run("s", "k" * 30, {}, {}, lambda d2: _files(d2, {"a.bin": b"from w2", "b.bin": b"w2"}))
        return _files(d, {"a.bin": b"from w1", "b.bin": b"w1"})
    m, reused = w1.run("s", "k" * 30, {}, {}, slow_build)
    assert reused and m.path("a.bin").read_bytes() == b"from w2" and m.path("b.bin").read_bytes() == b"w2"
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    writers = [p.name for p in kdir.iterdir() if p.is_dir()]
    assert writers == [json.loads((kdir / "manifest.json").read_text())["writer"]]  # the loser removed its files


def test_truncated_object_is_found_at_reuse_without_downloading(tmp_path, monkeypatch, caplog):
    """A missing or truncated object is found by one listing when the stage is reused (nothing downloaded) and the
    stage is recomputed at once."""
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good", "b.bin": b"also"}))
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    writer = json.loads((kdir / "manifest.json").read_text())["writer"]
    (kdir / writer / "a.bin").write_bytes(b"go")
    w2 = _store(tmp_path, "w2")  # a worker without the objects cached
    got = []
    real = w2.fs.get_file
    monkeypatch.setattr(w2.fs, "get_file", lambda src, dst, **kw: got.append(src) or real(src, dst, **kw))
    assert w2.get("s", "k" * 30) is None and not (kdir / "manifest.json").exists() and not got
    m, reused = w2.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good", "b.bin": b"also"}))
    assert not reused and m.path("a.bin").read_bytes() == b"good"
    (kdir / m.data["writer"] / "b.bin").unlink()  # w2's object cache still holds it: the listing decides
    assert w2.get("s", "k" * 30) is None and not (kdir / "manifest.json").exists()
    assert "b.bin is missing" in caplog.text and not got


def test_corrupt_object_of_the_same_size_is_found_when_opened(tmp_path):
    """Other bytes at the same size pass the listing; the sha256 fails when a stage opens the file: one error line
    naming the stage, the manifest deleted, and the next run recomputes the stage."""
    from sam2ptq_core.pipeline.object_store import CorruptStage
    from sam2ptq_core.pipeline.stages import StageError
    assert issubclass(CorruptStage, StageError)  # the CLI's one error line wherever a stage opens the file
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good"}))
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    writer = json.loads((kdir / "manifest.json").read_text())["writer"]
    (kdir / writer / "a.bin").write_bytes(b"evil")
    w2 = _store(tmp_path, "w2")
    m, reused = w2.run("s", "k" * 30, {}, {}, lambda d: pytest.fail("rebuilt before anything was opened"))
    assert reused
    with pytest.raises(CorruptStage, match=r"stage s kkkkkkkkkkkk in file://.* is corrupt \(checksum mismatch"):
        m.path("a.bin")
    assert not (kdir / "manifest.json").exists() and not (m.dir / "a.bin").exists()
    m, reused = w2.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good"}))
    assert not reused and m.path("a.bin").read_bytes() == b"good"


def test_reuse_downloads_only_what_is_opened(tmp_path, monkeypatch):
    """Issue 28 item 2: a second worker reusing a stage fetches its manifest and lists its files, and downloads a
    file only when a stage opens it (main downloaded every file of every reused stage: 672 MB on the demo, the
    captured activations included)."""
    big = b"\x01" * 200_000
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"acts.pt": big, "small.json": b"{}"}))
    w2 = _store(tmp_path, "w2")
    got = []
    real = w2.fs.get_file
    monkeypatch.setattr(w2.fs, "get_file", lambda src, dst, **kw: got.append(Path(src).name) or real(src, dst, **kw))
    m, reused = w2.run("s", "k" * 30, {}, {}, lambda d: pytest.fail("rebuilt"))
    assert reused and got == [] and not list((tmp_path / "w2" / "objects").iterdir())
    assert json.loads(m.path("small.json").read_text()) == {} and got == ["small.json"]
    assert m.path("small.json").read_text() == "{}" and got == ["small.json"]  # once
    assert m.path("acts.pt").read_bytes() == big and got == ["small.json", "acts.pt"]
    assert sorted(p.name for p in m.dir.iterdir()) == ["acts.pt", "manifest.json", "small.json"]
    from sam2ptq_core import files
    hashed, real_hash = [], files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p: hashed.append(p.name) or real_hash(p))
    for _ in range(3):  # each open_artifact is a new get(); the cached copy is hashed once per process
        assert w2.get("s", "k" * 30).path("acts.pt").read_bytes() == big
    assert hashed == [] and got == ["small.json", "acts.pt"]


def test_a_reader_of_an_old_copy_never_deletes_a_rebuilt_stage(tmp_path):
    """Worker A reused a stage whose object was corrupt (same size); worker B found it first, and rebuilt and
    published the stage. When A opens the file, B's good copy stays: A's run stops with one line, the next reuses
    B's copy."""
    from sam2ptq_core.pipeline.object_store import CorruptStage
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good"}))
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    old = json.loads((kdir / "manifest.json").read_text())["writer"]
    (kdir / old / "a.bin").write_bytes(b"evil")
    a, b = _store(tmp_path, "wa"), _store(tmp_path, "wb")
    held = a.get("s", "k" * 30)
    with pytest.raises(CorruptStage, match="its manifest was deleted"):
        b.get("s", "k" * 30).path("a.bin")
    m, reused = b.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"good"}))
    assert not reused and m.data["writer"] != old
    with pytest.raises(CorruptStage, match="another worker has rebuilt it meanwhile"):
        held.path("a.bin")
    assert json.loads((kdir / "manifest.json").read_text())["writer"] == m.data["writer"]
    assert a.get("s", "k" * 30).path("a.bin").read_bytes() == b"good"


@pytest.mark.slow
def test_pipeline_on_s3_two_workers_and_a_corrupt_object(s3_server, tmp_path):
    env = {**s3_server, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)

    def cli(worker: str, out: str = ""):
        out = tmp_path / (out or f"out-{worker}")
        r = subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), "--config", str(REDUCED_CFG),
                            "--cache.root", "s3://sam2ptq-test/stages", "--cache.local", str(tmp_path / worker),
                            "--output.root", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((out / "reduced_w4a4" / "stages.json").read_text())

    first = cli("w1")
    assert not any(s["reused"] for s in first.values())
    second = cli("w2")  # another worker: every stage comes from the bucket
    assert all(s["reused"] for k, s in second.items() if k != "export")
    a = (tmp_path / "out-w1" / "reduced_w4a4" / "cache" / "scale.pt").read_bytes()
    assert a == (tmp_path / "out-w2" / "reduced_w4a4" / "cache" / "scale.pt").read_bytes()
    # corrupt the GPTQ stage's object in the bucket: a third worker detects it and recomputes that stage only
    k = "sam2ptq-test/stages/gptq_lowrank/" + first["gptq_lowrank"]["key"][:24]
    code = (f"import json, s3fs; fs = s3fs.S3FileSystem(); w = json.loads(fs.cat_file('{k}/manifest.json'))['writer']; "
            f"fs.pipe_file('{k}/' + w + '/layers.json', b'{{}}')")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    third = cli("w3")
    assert not third["gptq_lowrank"]["reused"] and third["capture_activations"]["reused"]
    assert (tmp_path / "out-w3" / "reduced_w4a4" / "cache" / "scale.pt").read_bytes() == a  # same numbers again
    # a worker with an empty cache.local on a tree another worker wrote for this run: stages and tree reused, and it
    # downloads only the small files the guard reads (main downloaded every file of every stage: 672 MB on the demo)
    fourth = cli("w4", "out-w3")
    assert all(s["reused"] for s in fourth.values())
    views = tmp_path / "w4" / "views"  # <stage>/<key24>.<writer>/<file>
    fetched = sorted((p.relative_to(views).parts[0], p.parent.name[:24], p.name) for p in views.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert fetched == [("evaluate", fourth["evaluate"]["key"][:24], "metrics.json"),
                       ("fetch_model", fourth["fetch_model"]["key"][:24], "model.json")], fetched  # the guard reads
    # one regression ledger for all four workers, in the bucket: each run compared with the others' baseline
    code = ("import json, s3fs; fs = s3fs.S3FileSystem(); "
            "print(sum(len(json.loads(fs.cat_file(p))['runs']) for p in fs.ls('sam2ptq-test/stages/ledger')))")
    r = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60, capture_output=True, text=True)
    assert r.stdout.strip() == "4"


def test_unreachable_bucket_is_one_line_before_any_work(s3_server, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), "--config", str(REDUCED_CFG),
                        "--cache.root", "s3://no-such-bucket/stages", "--cache.local", str(tmp_path / "w"),
                        "--output.root", str(tmp_path / "o")], cwd=ROOT, env=s3_server, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "cache.root s3://no-such-bucket/stages cannot be reached" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_regression_baseline_is_shared_by_workers(tmp_path):
    """Worker 2's regression guard sees the baseline worker 1 recorded (the ledger lives in the shared store)."""
    from sam2ptq_core.pipeline.regression import check_and_record
    w1, w2 = _store(tmp_path, "w1").ledger(), _store(tmp_path, "w2").ledger()
    assert check_and_record(w1, "fam", {"miou_vs_fp": 0.95, "run": "r1"}, 0.5).ok
    assert w2.get("fam") == [{"miou_vs_fp": 0.95, "run": "r1"}] and w2.keys() == ["fam"]
    v = check_and_record(w2, "fam", {"miou_vs_fp": 0.93, "run": "r2"}, 0.5)
    assert not v.ok and "0.9500 (run r1)" in v.message
    shutil.rmtree(tmp_path / "w1")  # a lost worker disk loses nothing
    assert _store(tmp_path, "w3").ledger().get("fam") == [{"miou_vs_fp": 0.95, "run": "r1"}]


def test_upload_interrupted_halfway_on_s3_leaves_no_visible_stage(s3_server, tmp_path, monkeypatch):
    """On a real S3 server: the connection drops after the first file; no manifest, so no stage, for anyone."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(k, s3_server[k])
    url = "s3://sam2ptq-test/interrupted"
    st = ObjectStageStore(url, tmp_path / "w1")
    st.fs.invalidate_cache()
    n = _drop_second_upload(st, monkeypatch)
    with pytest.raises(ConnectionError):
        st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"1" * 5000, "b.bin": b"2", "c.bin": b"3"}))
    assert len(n) == 2 and st.fs.exists(f"sam2ptq-test/interrupted/s/{'k' * 24}")  # one object did land
    w2 = ObjectStageStore(url, tmp_path / "w2")
    assert w2.get("s", "k" * 30) is None and not w2.fs.exists(f"sam2ptq-test/interrupted/s/{'k' * 24}/manifest.json")
    m, reused = w2.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"1" * 5000, "b.bin": b"2", "c.bin": b"3"}))
    assert not reused and m.path("c.bin").read_bytes() == b"3"


def test_a_local_eviction_race_never_deletes_a_shared_stage(tmp_path, monkeypatch):
    """Another process on the same cache.local evicts the cached copy between fetch and link (two workers sharing a
    small cache): the reader fetches it again; the stage's manifest in the bucket stays (main deleted it)."""
    _store(tmp_path, "w1").run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"y" * 500}))
    w2 = _store(tmp_path, "w2")
    real, evicted = w2._fetch, []

    def racing(remote, info):
        obj = real(remote, info)
        if not evicted:  # the other process's eviction, right after our fetch
            obj.unlink()
            evicted.append(obj)
        return obj
    monkeypatch.setattr(w2, "_fetch", racing)
    m = w2.get("s", "k" * 30)
    assert m is not None and m.path("a.bin").read_bytes() == b"y" * 500 and evicted
    assert (tmp_path / "bucket" / "s" / ("k" * 24) / "manifest.json").is_file()


def test_corrupt_json_in_the_bucket_is_repaired(tmp_path, caplog):
    """A manifest that is not JSON is a corrupt stage (deleted with a warning, rebuilt); a ledger record that is not
    JSON is a lost record (deleted with a warning: that family starts a new baseline). Main failed every later run
    with "Expecting value: line 1 column …"."""
    st = _store(tmp_path, "w1")
    st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"z"}))
    (tmp_path / "bucket" / "s" / ("k" * 24) / "manifest.json").write_text('{"stage": "s", "key": ')
    assert _store(tmp_path, "w2").get("s", "k" * 30) is None
    assert "manifest is not JSON" in caplog.text
    m, reused = st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"z"}))
    assert not reused and m.path("a.bin").read_bytes() == b"z"
    ledger = st.ledger()
    ledger["fam"] = [{"miou_vs_fp": 0.9, "run": "r1"}]
    rec = next((tmp_path / "bucket" / "ledger").glob("*.json"))
    rec.write_text("{not json")
    assert ledger.get("fam", []) == [] and not rec.exists() and ledger.keys() == []
    assert "run ledger record" in caplog.text


def test_a_damaged_local_ledger_starts_a_new_baseline(tmp_path, caplog):
    from sam2ptq_core.pipeline.store import StageStore
    store = StageStore(tmp_path)
    store.ledger()["fam"] = [{"miou_vs_fp": 0.9}]
    db = tmp_path / "diskcache" / "ledger" / "cache.db"
    db.write_bytes(b"this is not a database" * 100)
    led = store.ledger()
    assert led.get("fam") is None and "run ledger" in caplog.text and "corrupt" in caplog.text
    led["fam"] = [{"miou_vs_fp": 0.8}]
    assert store.ledger()["fam"] == [{"miou_vs_fp": 0.8}]


def test_a_hung_s3_endpoint_fails_in_one_line_within_the_bound(tmp_path):
    """An endpoint that accepts connections and never answers (main: 15 minutes with nothing printed). With
    --cache.io_timeout_seconds 2 the waiting is said (a warning at most every 10 s) and the run ends with one error
    line; measured 62 s (s3fs and botocore retries)."""
    import os
    import socket
    import threading
    import time
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []
    stop = threading.Event()

    def accept():  # hold every connection open, answer nothing
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue
    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{srv.getsockname()[1]}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), "--config", "configs/demo.yaml",
                            "--cache.root", "s3://frozen/x", "--cache.local", str(tmp_path / "local"),
                            "--cache.io_timeout_seconds", "2", "--output.root", str(tmp_path / "o")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()
    took = time.time() - t0
    print(f"hung endpoint: failed after {took:.1f} s")
    assert r.returncode == 2 and "cache.root s3://frozen/x cannot be reached" in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]] and took < 180, (took, r.stderr)
    waiting = [ln for ln in lines if "retrying — waiting on the endpoint" in ln]
    assert 1 <= len(waiting) <= took / 10 + 1 and len(lines) == len(waiting) + 1, r.stderr  # the waiting is said


def test_local_max_gb_bounds_built_files_and_views(tmp_path, monkeypatch):
    """cache.local_max_gb counts what a worker builds itself and the views (main: 51 MB kept at a 107 KB limit).
    Three stages of 800 bytes (+ a 369-byte manifest in each view) with a 1300-byte bound: what stays on disk
    (unique inodes) never exceeds it; a stage evicted locally is fetched again from the bucket when needed."""
    import sam2ptq_core.pipeline.object_store as osm
    monkeypatch.setattr(osm, "VIEW_GRACE_S", 0)  # every view is idle (the default spares views of the last 10 min)
    st = ObjectStageStore(f"file://{tmp_path / 'bucket'}", tmp_path / "w1", max_cache_bytes=1300)

    def on_disk() -> int:
        seen = {}
        for p in (tmp_path / "w1").rglob("*"):
            if p.is_file() and p.parent.name != "locks":
                s = p.stat()
                seen[(s.st_dev, s.st_ino)] = s.st_size
        return sum(seen.values())
    for i in range(3):
        st.run("s", str(i) * 30, {}, {}, lambda d, i=i: _files(d, {"a.bin": bytes([i]) * 800}))
        assert on_disk() <= 1300, on_disk()
    assert st.get("s", "0" * 30).path("a.bin").read_bytes() == b"\0" * 800  # back from the bucket
    assert on_disk() <= 1300


def test_gc_removes_leftovers_never_a_stage(tmp_path):
    """``quantize_sam2.py gc``: an interrupted upload (a writer prefix with no manifest), the losing/corrupt copy
    beside a published stage and a dead process's staging folder go; the published stage, a recent upload (a writer
    that may still be running) and a live process's staging stay; --dry-run removes nothing."""
    import os
    import time

    from sam2ptq_core.files import writer_tag
    url = f"file://{tmp_path / 'bucket'}"
    st = _store(tmp_path, "w1")
    st.run("s", "k" * 30, {}, {}, lambda d: _files(d, {"a.bin": b"kept"}))
    kdir = tmp_path / "bucket" / "s" / ("k" * 24)
    old = time.time() - 3 * 86400
    stray = [kdir / "deadhost-1-aaaa", tmp_path / "bucket" / "s" / ("j" * 24) / "deadhost-2-bbbb"]
    for d in stray:
        d.mkdir(parents=True)
        (d / "acts.pt").write_bytes(b"x" * 100)
        os.utime(d / "acts.pt", (old, old))
    recent = tmp_path / "bucket" / "s" / ("m" * 24) / "otherhost-3-cccc"
    recent.mkdir(parents=True)
    (recent / "acts.pt").write_bytes(b"y")
    staging = tmp_path / "w1" / "staging"
    dead = staging / f"s-{'d' * 24}-{writer_tag().rsplit('-', 2)[0]}-999999999-eeee"
    live = staging / f"s-{'l' * 24}-{writer_tag()}"
    dead.mkdir()
    live.mkdir()
    args = [sys.executable, str(ROOT / "quantize_sam2.py"), "gc", "--config", str(REDUCED_CFG), "--cache.root", url,
            "--cache.local", str(tmp_path / "w1")]
    r = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "gc: would remove 3 leftover(s)" in r.stdout, r.stdout + r.stderr
    assert all(d.exists() for d in [*stray, dead])
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "gc: removed 3 leftover(s)" in r.stdout, r.stdout + r.stderr
    assert not any(d.exists() for d in [*stray, dead]) and recent.exists() and live.exists()
    assert _store(tmp_path, "w2").get("s", "k" * 30).path("a.bin").read_bytes() == b"kept"
    empty = [*args[:-4], "--cache.root", f"file://{tmp_path / 'nothing-yet'}", *args[-2:]]
    r = subprocess.run(empty, capture_output=True, text=True, cwd=ROOT)  # a store with nothing in it yet
    assert r.returncode == 0 and "gc: removed 0 leftover(s)" in r.stdout, r.stdout + r.stderr
