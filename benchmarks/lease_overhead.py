"""Cost of the per-stage Prefect lease (pipeline/leases.py) against a real local Prefect server.

    python benchmarks/lease_overhead.py [cycles]

Starts Prefect's test server (temporary database), then times ``cycles`` free take/release/delete cycles of
``stage_lease``: what a run pays per stage it builds on an object-store root. Reused stages take no lease.
"""
import statistics
import sys
import time


def main(cycles: int = 20) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from sam2ptq_core.pipeline.leases import stage_lease
    with prefect_test_harness(server_startup_timeout=120):
        times = []
        for i in range(cycles + 1):
            t = time.perf_counter()
            with stage_lease("bench", f"{i:040d}"):
                pass
            times.append(time.perf_counter() - t)
        times = times[1:]  # the first includes client start-up
        print(f"stage_lease take+release+delete, {cycles} cycles: median {1000 * statistics.median(times):.0f} ms, "
              f"max {1000 * max(times):.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
