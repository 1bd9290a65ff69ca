"""Prefect's temporary local server for one CLI run, which never outlives the CLI.

Prefect starts the same server by itself when no API is configured, but a CLI killed with SIGKILL would leave it
running. Here the CLI starts it (the command of Prefect's own ``SubprocessASGIServer``) together with a small guard
process that the kernel signals when the CLI dies (Linux ``PR_SET_PDEATHSIG``); the guard then stops the server.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["temporary_server", "launch", "Launched", "ServerDidNotStart", "HomeNotWritable", "check_home",
           "choose_home"]


class ServerDidNotStart(RuntimeError):
    """Prefect's temporary server did not answer in time; the message names PREFECT_HOME and the ways out."""


class HomeNotWritable(RuntimeError):
    """The PREFECT_HOME the user set cannot hold the temporary server's database; the message names the fix."""


def _unwritable(home: Path) -> str:
    """Why Prefect could not keep its database in ``home`` ("" when it can): the folder must be creatable and
    take a new file, an existing ``prefect.db`` must open for writing. A probe, since permission bits do not tell
    for root, read-only mounts or a file in the way."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sam2ptq-probe-", dir=home)
        os.close(fd)
        os.unlink(probe)
        if (home / "prefect.db").exists():
            open(home / "prefect.db", "r+b").close()
    except OSError as e:
        return e.strerror or str(e)
    return ""


def check_home(home: str | Path, fallback: Path | None = None) -> None:
    """HomeNotWritable, at once, when Prefect's temporary server could not create its database in ``home``: the
    server would die at its first query while the CLI waited out the whole startup timeout."""
    home = Path(home).expanduser()
    if why := _unwritable(home):
        default = Path("~/.prefect").expanduser()
        unset = "" if fallback is None else f"unset it (the run then uses {fallback}), " if home == default else (
            f"unset it (the run then uses {default}, or {fallback} if that cannot be written), ")
        raise HomeNotWritable(f"PREFECT_HOME {home} cannot be written ({why}): Prefect's temporary server keeps its "
                              f"database there; point PREFECT_HOME at a writable folder, {unset}or set "
                              f"PREFECT_API_URL to a running server")


def choose_home(fallback: Path) -> str:
    """Before Prefect is imported (it reads PREFECT_HOME once): when PREFECT_HOME is not set and the default
    ``~/.prefect`` cannot be written (a read-only HOME), the temporary server's home becomes ``fallback`` (user
    profiles are still read from ``~/.prefect``). Returns the note for the console ("" when nothing changed). A
    PREFECT_HOME the user set is never replaced: ``check_home`` refuses it when the server needs it."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_HOME"):
        return ""
    default = Path("~/.prefect").expanduser()
    why = _unwritable(default)
    if not why or _unwritable(fallback):
        return ""  # usable; or the fallback is no better, and check_home names PREFECT_HOME's fix
    os.environ["PREFECT_HOME"] = str(fallback)
    if (default / "profiles.toml").is_file() and "PREFECT_PROFILES_PATH" not in os.environ:
        os.environ["PREFECT_PROFILES_PATH"] = str(default / "profiles.toml")
    return f"home {fallback}, as {default} cannot be written: {why}"


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


def _uvicorn(port: int, settings) -> subprocess.Popen:
    """Prefect's temporary server as ``SubprocessASGIServer`` runs it (the same command and environment), without
    importing ``prefect.server.api.server`` into this process: that import alone took 2.2 s of a cached rerun."""
    import prefect
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **settings.to_environment_variables(exclude_unset=True)}
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "error", "--lifespan", "on"], env=env)


def _free_port() -> int:
    import socket
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Launched:
    """The temporary server's process, started (``launch``) before it is needed, so that it boots (about 6 s on 2
    cores) while the CLI imports the flow; its guard process stops it when the CLI dies before ``stop``."""

    def __init__(self, settings):
        self.settings = settings
        self._spawn()

    def _spawn(self) -> None:
        self.port = _free_port()
        self.proc = _uvicorn(self.port, self.settings)
        self.guard = None
        if sys.platform.startswith("linux"):
            self.guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(self.proc.pid)],
                                          preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout_s: float) -> None:
        """Return once ``/health`` answers; RuntimeError after ``timeout_s`` or when the server exits."""
        import time
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() == 3:  # its port was taken meanwhile: another one
                self.stop()
                self._spawn()
            elif self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            if _healthy(self.api_url):
                return
            time.sleep(0.1)
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server")

    def stop(self) -> None:
        _stop(self.proc)
        if self.guard is not None:
            self.guard.kill()
            self.guard.wait()


def launch() -> Launched:
    """Start the temporary server's process now (``temporary_server`` waits for it); HomeNotWritable first."""
    from prefect.settings import get_current_settings
    check_home(get_current_settings().home)
    return Launched(get_current_settings())


@contextlib.contextmanager
def temporary_server(timeout_s: int, launched: Launched | None = None) -> Iterator[str]:
    """Wait for Prefect's temporary server (``launched``, or one started now), point this process at it and yield
    its API URL; stop it on exit."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
    server = launched or launch()
    logging.getLogger("prefect").info("Starting temporary server on http://127.0.0.1:%d", server.port)
    try:
        server.wait(timeout_s)
    except RuntimeError as e:
        server.stop()
        raise ServerDidNotStart(
            f"Prefect's temporary server did not start within {timeout_s} s ({str(e).splitlines()[0]}); check that "
            f"PREFECT_HOME {get_current_settings().home} is writable, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_"
            f"SECONDS, or set PREFECT_API_URL to a running server") from None
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _drain()  # send the last logs and events while the server still listens
    finally:
        logging.getLogger("prefect").info("Stopping temporary server on http://127.0.0.1:%d", server.port)
        server.stop()
