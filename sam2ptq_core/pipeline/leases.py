"""One computation per stage across machines: a Prefect global concurrency limit of one slot per stage key.

Used by the object store (``cache.root`` is a URL) whenever a Prefect API is configured, as it is on every worker
of a pool. A run that must build a stage first takes the limit ``sam2ptq-<stage>-<key[:24]>`` (created with one
slot if missing); a second run that needs the same stage waits for that slot, then finds the stage published and
reuses it. The slot is a Prefect *lease*: the holder's client renews it in the background, so a holder killed with
``kill -9`` frees it when the lease runs out (``cache.lease_seconds``, 60 s at least: Prefect's minimum) and the
server's repossessor notices (every 15 s by default). The holder deletes the limit once the stage is published, so
the server keeps no limit per finished stage.

Without a Prefect API there is no lease: two machines may then both compute a stage, and the exclusive manifest
write still keeps exactly one whole result. Local stores keep their flock (``store.py``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from .progress import run_logger

__all__ = ["prefect_api_configured", "stage_lease", "lease_name"]


class _PublishedLeaseFilter(logging.Filter):
    """Prefect warns when a waiter finds the limit gone; for our leases that means the holder published the stage
    (and deleted its limit), which is expected: the waiter proceeds and reuses the stage. Other limits still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("do not exist - skipping acquisition" in msg and "'sam2ptq-" in msg)


_FILTER = _PublishedLeaseFilter()
for _name in ("prefect.task_runs", "prefect.flow_runs", "prefect.concurrency"):
    logging.getLogger(_name).addFilter(_FILTER)

def prefect_api_configured() -> bool:
    from prefect.settings import PREFECT_API_URL
    return bool(PREFECT_API_URL.value())


def lease_name(stage: str, key: str) -> str:
    return f"sam2ptq-{stage}-{key[:24]}"


def _ensure_limit(client, name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    try:  # read first: two runs creating one name at once make the server log a UNIQUE-constraint traceback
        client.read_global_concurrency_limit_by_name(name)
        return
    except ObjectNotFound:
        pass
    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    except ObjectAlreadyExists:
        pass  # another run created it first: we queue on the same slot


@contextmanager
def stage_lease(stage: str, key: str, seconds: float = 60) -> Iterator[None]:
    """Hold the one slot of this stage key's global concurrency limit for the block (waiting for it if another
    run holds it); delete the limit after a block that finished without error."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency  # public API; _PublishedLeaseFilter quiets its expected warning

    name = lease_name(stage, key)
    with get_client(sync_client=True) as client:
        _ensure_limit(client, name)
        try:
            busy = client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except Exception:  # noqa: BLE001 — deleted meanwhile: the stage was just published
            busy = False
    if busy:
        run_logger().info("stage %s %s is being computed by another run: waiting for its lease (%s)", stage,
                          key[:12], name)
    with concurrency(name, lease_duration=seconds):
        yield
    with get_client(sync_client=True) as client:  # published: a later run reuses the stage without the lease
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except Exception as e:  # noqa: BLE001 — a leftover limit costs nothing but a row; never fail over it
            run_logger().debug("could not delete concurrency limit %s: %s", name, e)
