"""Prefect's temporary local server for one CLI run, which never outlives the CLI.

Prefect starts the same server by itself when no API is configured, but a CLI killed with SIGKILL would leave it
running. Here the CLI starts it (Prefect's own ``SubprocessASGIServer``) together with a small guard process that
the kernel signals when the CLI dies (Linux ``PR_SET_PDEATHSIG``); the guard then stops the server.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator

__all__ = ["temporary_server", "ServerDidNotStart"]


class ServerDidNotStart(RuntimeError):
    """Prefect's temporary server did not answer in time; the message names PREFECT_HOME and the ways out."""

_GUARD = """
import os, signal, sys, time
server = int(sys.argv[1])
def stop(*_):
    try:
        os.kill(server, signal.SIGTERM)
    except ProcessLookupError:
        pass
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(3600)
"""


def _die_with_parent() -> None:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _drain() -> None:
    """Flush Prefect's background log and event workers (as prefect_test_harness does before stopping its server)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (_safe(lambda: APILogWorker.instance().drain()), _safe(EventsWorker.drain_all)):
            if inspect.isawaitable(result):
                await result
    run_coro_as_sync(drain())


def _safe(call):
    try:
        return call()
    except RuntimeError:  # the worker never started
        return None


@contextlib.contextmanager
def temporary_server(timeout_s: int) -> Iterator[str]:
    """Start Prefect's temporary server, point this process at it and yield its API URL; stop both on exit."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
    server = SubprocessASGIServer()
    try:
        server.start(timeout=timeout_s)
    except RuntimeError as e:
        server.stop()
        raise ServerDidNotStart(
            f"Prefect's temporary server did not start within {timeout_s} s ({str(e).splitlines()[0]}); check that "
            f"PREFECT_HOME {get_current_settings().home} is writable, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_"
            f"SECONDS, or set PREFECT_API_URL to a running server") from None
    guard = None
    if sys.platform.startswith("linux") and server.server_process is not None:
        guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(server.server_process.pid)],
                                 preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _drain()  # send the last logs and events while the server still listens
    finally:
        server.stop()
        if guard is not None:
            guard.kill()
            guard.wait()
