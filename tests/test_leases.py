"""One computation per stage across machines: two workers that need the same stage at once, sharing one bucket and
one Prefect server, build it once; the other waits on the Prefect lease and reuses it."""
import threading
import time

import pytest

from sam2ptq_core.pipeline.leases import lease_name, stage_lease
from sam2ptq_core.pipeline.object_store import ObjectStageStore

pytestmark = pytest.mark.slow


def _limits() -> list[str]:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as c:
        return [x.name for x in c.read_global_concurrency_limits(limit=200)]


def test_two_workers_one_build_through_the_lease(prefect_server, tmp_path, caplog):
    url = f"file://{tmp_path / 'bucket'}"
    workers = [ObjectStageStore(url, tmp_path / f"w{i}", lease=stage_lease) for i in (1, 2)]
    builds, results, started = [], {}, threading.Event()

    def build(d):
        builds.append(threading.current_thread().name)
        started.set()
        time.sleep(3)  # long enough for the other worker to find the lease taken
        (d / "a.bin").write_bytes(b"once")
        return {}

    def work(i):
        if i == 1:
            started.wait(30)  # worker 1 arrives while worker 2 builds
        results[i] = workers[i - 1].run("capture", "c" * 40, {}, {}, build)

    ts = [threading.Thread(target=work, args=(2,), name="w2"), threading.Thread(target=work, args=(1,), name="w1")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert builds == ["w2"]  # one computation
    (m2, reused2), (m1, reused1) = results[2], results[1]
    assert m2.data["writer"] == m1.data["writer"]
    assert not reused2 and reused1 and m1.path("a.bin").read_bytes() == b"once"
    assert lease_name("capture", "c" * 40) not in _limits()  # published: the limit is gone from the server
    # the waiter found the limit deleted (the stage published): expected, so Prefect's public API warns nothing
    assert "do not exist" not in caplog.text


def test_lease_waits_for_the_holder_and_a_failed_build_keeps_no_stage(prefect_server, tmp_path):
    url = f"file://{tmp_path / 'bucket'}"
    w1 = ObjectStageStore(url, tmp_path / "w1", lease=stage_lease)
    order = []
    with stage_lease("s", "k" * 40):  # another run holds the slot
        t = threading.Thread(target=lambda: order.append(w1.run("s", "k" * 40, {}, {},
                                                                   lambda d: (d / "x").write_bytes(b"1") and {})))
        t.start()
        time.sleep(3)
        assert not order  # worker 1 waits for the lease
        order.append("released")
    t.join(60)
    assert order[0] == "released" and order[1][1] is False

    def boom(d):
        raise RuntimeError("build failed")
    with pytest.raises(RuntimeError):
        w1.run("s", "f" * 40, {}, {}, boom)
    assert w1.get("s", "f" * 40) is None
    taken = []  # the failed builder released its slot: taking it again returns at once (a leaked one would block)

    def take():
        with stage_lease("s", "f" * 40):
            taken.append(True)
    probe = threading.Thread(target=take, daemon=True)
    probe.start()
    probe.join(30)
    assert taken, "the failed build leaked its lease slot: it could not be taken again within 30 s"


def test_gc_deletes_lease_limits_no_run_holds(prefect_server, tmp_path):
    """A killed holder's limit stays on the server; ``collect_garbage`` deletes our idle ``sam2ptq-*`` limits and
    leaves held ones and other limits alone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.gc import collect_garbage
    from tests.helpers import REDUCED_CFG
    with get_client(sync_client=True) as c:
        for name in ("sam2ptq-capture-stale", "someone-elses"):
            c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with stage_lease("s", "h" * 40):  # held right now: kept
        got = collect_garbage(load_config(REDUCED_CFG, [f"cache.root={tmp_path / 'c'}"]))
        left = _limits()
    assert got["leases"] == ["concurrency limit sam2ptq-capture-stale"]
    assert "sam2ptq-capture-stale" not in left and "someone-elses" in left and lease_name("s", "h" * 40) in left
