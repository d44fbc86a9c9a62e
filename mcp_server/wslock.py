"""The workspace lock: one file lock (``<workspace>/.lock``) serialising every read-modify-write of shared state.

Several servers may share a workspace (a desktop host plus one-shot Inspector calls, each its own process), and a
finishing worker starts the next queued job with no server at all. In-process locks cannot order them, so
config.json, state.json, notices.json and job allocation/queue changes all happen under this lock. It is
``filelock.FileLock`` (flock on POSIX): released by the kernel when a holder dies, so a killed process never
wedges the workspace. Re-entrant in one thread; other threads and processes wait.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

LOCK_FILE = ".lock"
TIMEOUT_S = 60.0  # holders only read and write small JSON files; a minute means something is stuck


class WorkspaceLockTimeout(RuntimeError):
    """Another process held the workspace lock for longer than TIMEOUT_S."""


class WorkspaceLock:
    """``with ws.lock:`` - cross-process and cross-thread mutual exclusion over one workspace."""

    def __init__(self, root: Path, timeout: float = TIMEOUT_S):
        self.path = root / LOCK_FILE
        # thread_local (the default): each thread holds its own level, so threads exclude each other too.
        self._lock = FileLock(str(self.path), timeout=timeout)

    def __enter__(self) -> WorkspaceLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout as err:
            raise WorkspaceLockTimeout(f"the workspace lock {self.path} was held by another process for over "
                                       f"{self._lock.timeout:.0f} s; is a server or worker stuck?") from err
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
