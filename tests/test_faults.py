"""Bad input and faults (the 27-case audit): each case gets one clear line, a non-zero exit, nothing half-written."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sam2ptq_core.config import ConfigError, load_config
from sam2ptq_core.files import DiskFull, atomic_dir, sweep_leftovers
from sam2ptq_core.pipeline.preflight import preflight
from tests.helpers import REDUCED_CFG, ROOT


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--quant.wgts.low_rank.rank", "100000"], "quant.wgts.low_rank.rank 100000 is not below 96"),
    (["--quant.wgts.low_rank.rank", "96"], "is not below 96"),
    (["--output.root", "/etc/hostname"], "output.root /etc/hostname is a file, not a folder"),
    (["--output.root", "/etc/hostname/sub"], "cannot be created: /etc/hostname is a file"),
    (["--cache.root", "/etc/hostname"], "cache.root /etc/hostname is a file, not a folder"),
    (["--quant.calib.num_samples", "11"], "holds 10 images but quant.calib.num_samples is 11"),
    (["--quant.calib.num_samples", "8"], "fewer than the 8 for calibration plus 3 held out"),
    # mixed precision: trees main wrote with exit 0 that predict could not load
    (["--quant.mixed.budget_bits", "3"], "quant.mixed.budget_bits 3.0 is below the minimum 4.253"),
    (["--quant.mixed", "{layers: [blocks.0.attn.qkvx]}"], "'blocks.0.attn.qkvx' matches no quantized layer"),
    (["--quant.mixed", "{budget_bits: 17, fallback: fp16}"], "nothing would be quantized"),
    # roots that cannot hold a stage store (main: a 34-line traceback, or a failure 212 s later)
    (["--cache.root", "ftp://x/y"], "ftp:// cannot hold a shared stage store"),
    (["--cache.root", "http://127.0.0.1:9/x"], "http:// cannot hold a shared stage store"),
])
def test_preflight_refuses_before_any_work(args, needle, tmp_path):
    r = _cli("--config", "configs/demo.yaml", "--cache.root", str(tmp_path / "c"), "--output.root",
             str(tmp_path / "o"), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())


def test_unwritable_cache_local_is_refused(tmp_path):
    """/proc accepts no folders although root passes the permission check (main: a 30-line traceback)."""
    r = _cli("--config", "configs/demo.yaml", "--cache.root", f"file://{tmp_path / 'bucket'}", "--cache.local",
             "/proc/sam2cache", "--output.root", str(tmp_path / "o"))
    assert r.returncode == 2 and "cache.local /proc/sam2cache cannot be written" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_rank_below_every_width_is_accepted():
    cfg = load_config(REDUCED_CFG, ["quant.wgts.low_rank.rank=47"])  # reduced Hiera: narrowest layers are 48 wide
    preflight(cfg)
    with pytest.raises(ConfigError, match="not below 48"):
        preflight(load_config(REDUCED_CFG, ["quant.wgts.low_rank.rank=48"]))


def test_invalid_yaml_names_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  name: tiny\n bad: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line 3, column 2: expected <block end>"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"override quant.skip has a value that is not valid YAML"):
        load_config(None, ["quant.skip=[1,"])


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    return run


@pytest.mark.parametrize("point,needle", [
    ("5000,-20", "--point 5000,-20 is outside the image: "),
    ("nan,inf", "--point nan,inf is outside the image"),
    ("ten,3", "--point must be two numbers X,Y in pixels, got 'ten,3'"),
    ("1,2,3", "--point must be two numbers X,Y"),
])
def test_predict_refuses_bad_points(point, needle, tmp_path, capsys):
    from sam2ptq_core.export.predict import main
    img = ROOT / "examples/images/coffee.jpg"
    w, h = Image.open(img).size
    rc = main(["--run", str(_run_dir(tmp_path)), "--image", str(img), "--point", point,
               "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    if "outside" in needle:
        assert f"is {w}×{h} pixels" in err


def test_predict_checks_run_and_out_first(tmp_path, capsys):
    from sam2ptq_core.export.predict import main
    img = str(ROOT / "examples/images/coffee.jpg")
    assert main(["--run", str(tmp_path / "nope"), "--image", img, "--point", "1,1"]) == 2
    err = capsys.readouterr().err
    assert "--run" in err and "is not a sam2ptq output tree" in err and "--config" not in err
    assert main(["--run", str(_run_dir(tmp_path)), "--image", img, "--point", "1,1",
                 "--out", str(tmp_path / "missing" / "m.png")]) == 2
    assert "folder" in capsys.readouterr().err


def test_disk_full_is_named_and_the_old_tree_survives(tmp_path):
    target = tmp_path / "tree"
    atomic_dir(target, lambda d: (d / "a").write_text("old"))
    for exc in (OSError(errno.ENOSPC, "No space left on device"),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 0")):
        def build(d, exc=exc):
            (d / "part").write_bytes(b"x" * 3000)
            raise exc
        with pytest.raises(DiskFull, match=r"no space left on .*: 0.0 MiB were written before the disk filled"):
            atomic_dir(target, build)
        assert (target / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_disk_full_on_a_real_small_file_system(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped otherwise): torch's own error becomes one line."""
    from sam2ptq_core.pipeline.stages import STAGES, run_stage
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = load_config(REDUCED_CFG, [f"cache.root={mnt}"])
        with pytest.raises(Exception, match=r"stage build_calibration_set failed: no space left on") as e:
            run_stage(STAGES["build_calibration_set"], cfg, {},
                      lambda d: torch.save(torch.zeros(1 << 20), d / "images.pt"))
        assert "finished stages are kept" in str(e.value)
        assert not any(p.name.startswith(".") for p in (mnt / "build_calibration_set").iterdir())
        # while the error is still held (Prefect keeps it in the task's state), the deleted file's blocks are free
        # again: torch's writer in the failed frames no longer pins them (main: 0 bytes free until the process ended)
        assert shutil.disk_usage(mnt).free > 0.9 * 2**20
        del e
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"the failed writer still holds files on the full disk: {r.stderr}"


def test_cli_on_a_full_disk_is_one_line_and_the_log_keeps_the_traceback(tmp_path):
    """cache.root on a 20 MiB tmpfs (needs root and mount; skipped otherwise): capture_activations fills it. Main
    ended with the right line, but before it printed Python's "--- Logging error ---" and the tracebacks being
    handled (torch's ``enforce fail at inline_container.cc``) several times, the run's log file sharing the full
    disk. Now the console shows one line, the log file holds the traceback, finished stages are kept."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
        env.pop("PREFECT_API_URL", None)
        r = _cli("--config", str(REDUCED_CFG), "--cache.root", str(mnt), "--output.root", str(tmp_path / "o"),
                 env=env, timeout=600)
        text = [ln for ln in r.stderr.replace("\r", "\n").splitlines()
                if ln.strip() and "%|" not in ln and not ln.startswith("starting Prefect")]
        assert r.returncode == 1 and len(text) == 1, r.stderr[-3000:]
        assert text[0].startswith("error: stage capture_activations failed: no space left on ") and \
            "finished stages are kept (full log: " in text[0], text
        log = Path(text[0].split("(full log: ")[1].rstrip(")")).read_text()
        assert "DiskFull: no space left on" in log and "enforce fail" in log  # the whole story is in the log
        for stage in ("fetch_model", "build_calibration_set"):
            assert len(list((mnt / stage).glob("*/manifest.json"))) == 1
        assert not [p for p in mnt.rglob(".*") if ".tmp-" in p.name]  # nothing half-written
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_log_file_that_cannot_be_written_warns_once(capsys):
    """The run's log file on a disk that stays full (/dev/full fails every write with ENOSPC): one warning line on
    the console, later records dropped, the error line says the log is incomplete; the stdlib's default printed
    "--- Logging error ---" and a traceback on the console for every record."""
    import logging

    import quantize_sam2
    handler = quantize_sam2.RunLogFile(Path("/dev/full"))
    lg = logging.getLogger("sam2ptq.test_log_file")
    lg.addHandler(handler)
    try:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 0")
        except RuntimeError:
            for i in range(5):
                lg.error("record %d", i, exc_info=True)
    finally:
        lg.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "warning: cannot write the log file /dev/full (No space left on device); the rest of this run's log is "
        "dropped (rerun with -v to see it on the console)"], err
    assert handler.failure == "No space left on device" and handler.stream is None
    assert quantize_sam2._where(handler) == " (log file /dev/full incomplete: No space left on device)"


def test_disk_full_on_cache_local_of_an_object_store(tmp_path):
    """cache.local (where an object-store worker builds a stage) on a 1 MiB tmpfs: one line naming it (main: 275
    console lines ending in torch's "enforce fail"), nothing left in staging, nothing published."""
    from sam2ptq_core.pipeline.stages import STAGES, run_stage
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = load_config(REDUCED_CFG, [f"cache.root=file://{tmp_path / 'bucket'}", f"cache.local={mnt}"])
        with pytest.raises(Exception, match=r"stage build_calibration_set failed: no space left on .*staging") as e:
            run_stage(STAGES["build_calibration_set"], cfg, {},
                      lambda d: torch.save(torch.zeros(1 << 20), d / "images.pt"))
        assert "finished stages are kept" in str(e.value) and "\n" not in str(e.value)
        assert not any((mnt / "staging").iterdir())
        assert not list((tmp_path / "bucket").rglob("manifest.json"))
        del e
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"the failed writer still holds files on the full disk: {r.stderr}"


def test_leftovers_of_dead_writers_are_swept_live_ones_kept(tmp_path):
    from sam2ptq_core.files import _HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".k.tmp-{_HOST}-{dead.pid}-aaaa"
    live = tmp_path / f".k.tmp-{_HOST}-{os.getpid()}-bbbb"
    other = tmp_path / f".k.tmp-otherhost-{dead.pid}-cccc"
    for d in (gone, live, other):
        d.mkdir()
        (d / "big").write_bytes(b"x" * 1000)
    assert sweep_leftovers(tmp_path) == [gone]
    assert live.is_dir() and other.is_dir() and not gone.exists()


def test_stage_failure_without_verbose_is_one_line_with_the_log(tmp_path):
    """A failure inside a stage (here: an annotations file that is not COCO JSON, read by evaluate)."""
    anns = tmp_path / "anns.json"
    anns.write_text("{not json")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    late = ["--quant.eval.annotations", str(anns)]
    r = _cli("--config", str(REDUCED_CFG), *late, "--cache.root", str(tmp_path / "c"), "--output.root",
             str(tmp_path / "o"), env=env, timeout=600)
    assert r.returncode == 1
    text = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert "Traceback" not in r.stderr and text[-1].startswith("error: stage evaluate failed: "), r.stderr
    assert [ln for ln in text if not ln.startswith("starting Prefect")] == [text[-1]]
    log = Path(text[-1].split("(full log: ")[1].rstrip(")"))
    assert log.is_file() and "Traceback" in log.read_text()
    assert not (tmp_path / "o").exists()
    r = _cli("-v", "--config", str(REDUCED_CFG), *late, "--cache.root", str(tmp_path / "c"), "--output.root",
             str(tmp_path / "o"), env=env, timeout=600)
    assert r.returncode == 1 and "Traceback" in r.stderr  # -v shows everything


def test_metrics_state_rank_and_16bit_share():
    from sam2ptq_core.algorithms.mixed_precision import branch_share
    from sam2ptq_core.algorithms.scheme import LayerScheme
    q = {"l": {"codes": torch.zeros(64, 32), "a": torch.zeros(4, 32), "b": torch.zeros(64, 4)}}
    got = branch_share(q, {"l": LayerScheme("sint4", rank=4)}, 4)
    # 64·32 codes at 4 bits = 1024 B; branch (4·32 + 64·4)·2 B = 768 B → 768 / 1792
    assert got == {"rank": 4, "lowbit_weight_bytes": 1024, "branch_16bit_bytes": 768, "share_16bit": 768 / 1792}
    assert json.dumps(got)


def test_temporary_server_that_cannot_start_in_time_is_one_line(tmp_path):
    """A server slower than its startup timeout (1 s here; its first start creates its database): the CLI ends with
    one line naming the ways out."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    env.pop("PREFECT_API_URL", None)
    r = _cli("--config", str(REDUCED_CFG), "--cache.root", str(tmp_path / "c"), "--output.root", str(tmp_path / "o"),
             env=env, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: Prefect's temporary server did not start within 1 s"), last
    assert "PREFECT_HOME" in last and "PREFECT_API_URL" in last and not (tmp_path / "o").exists()


def test_unwritable_prefect_home_is_refused_at_once(tmp_path):
    """PREFECT_HOME set to a folder that cannot be written (under a file here; a read-only mount alike): main
    started the temporary server, which printed its traceback when it could not create its database, and waited
    out the startup timeout (188 s at the default 180 s). Now one line before anything starts, exit 2 (measured
    1.7 s on 2 cores), nothing written; a PREFECT_HOME the user set is never replaced."""
    import time
    (tmp_path / "file").write_text("")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "file" / "home"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60"}
    env.pop("PREFECT_API_URL", None)
    t0 = time.time()
    r = _cli("--config", str(REDUCED_CFG), "--cache.root", str(tmp_path / "c"), "--output.root", str(tmp_path / "o"),
             env=env, timeout=300)
    took = time.time() - t0
    home = tmp_path / "file" / "home"
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: PREFECT_HOME {home} cannot be written (Not a directory): Prefect's temporary server keeps its "
        f"database there; point PREFECT_HOME at a writable folder, unset it (the run then uses "
        f"{Path('~/.prefect').expanduser()}, or {tmp_path / 'c' / 'prefect-home'} if that cannot be written), or "
        f"set PREFECT_API_URL to a running server"], r.stderr
    assert took < 30, took  # the server is never started
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_read_only_home_keeps_the_temporary_server_under_the_cache(tmp_path):
    """HOME that cannot be written (a file here; a read-only mount alike) and no PREFECT_HOME: main waited 188 s
    for a server that could not create ~/.prefect/prefect.db. Now the temporary server's home is
    <cache.root>/prefect-home, said in the console's first line, and the run completes."""
    (tmp_path / "file").write_text("")
    env = {**os.environ, "HOME": str(tmp_path / "file"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60"}
    for k in ("PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(k, None)
    r = _cli("--config", str(REDUCED_CFG), "--cache.root", str(tmp_path / "c"), "--output.root", str(tmp_path / "o"),
             env=env, timeout=600)
    home = tmp_path / "c" / "prefect-home"
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.splitlines()[0] == (
        f"starting Prefect's temporary local server (home {home}, as {tmp_path / 'file' / '.prefect'} cannot be "
        f"written: Not a directory; first start on this machine: creating its database, this can take a minute) …")
    assert (home / "prefect.db").is_file() and "output: " in r.stdout


def test_unreadable_images_fail_in_preflight_naming_them(tmp_path):
    """A truncated JPEG in a folder with just enough images: main warned in the log only and failed ~5 minutes later
    at evaluate with "0 usable images", naming no file. Now preflight decodes the chosen calibration and held-out
    images and fails at once, naming the unreadable file; a skipped file is a console warning."""
    src = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in src[:4]:
        shutil.copy(f, imgs / f.name)
    data = src[4].read_bytes()
    (imgs / "broken.jpg").write_bytes(data[: len(data) // 3])  # truncated
    r = _cli("--config", "configs/demo.yaml", "--quant.calib.path", str(imgs), "--quant.calib.num_samples", "2",
             "--quant.eval.num_samples", "3", "--cache.root", str(tmp_path / "c"), "--output.root", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "1 unreadable: broken.jpg" in err[0] and "usable images" in err[0], r.stderr
    # named on the console, once (main: a line for the file and a second "1 unreadable file(s) skipped" line)
    warned = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("error:")]
    assert len(warned) == 1 and "skipping 1 unreadable image in " in warned[0], r.stderr
    assert "broken.jpg (image file is truncated" in warned[0]
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()
