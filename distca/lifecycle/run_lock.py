"""One run per run dir: a lock file taken before anything is written there.

`<dir>/distca.lock` holds who runs in the folder (host, pid, the process's start time, the
torchrun job id, when it started); a thread refreshes its modification time every
`HEARTBEAT_S`. A second launch on a held folder is refused (a ConfigError naming the
holder: exit 2) instead of interleaving its logs and deleting the other run's checkpoints.
A lock is stale, and taken over with a warning, when its process is gone (same host) or
its heartbeat is older than `STALE_AFTER_S` (another host: the folder is shared, the
process cannot be asked). A torchrun restart (`--max-restarts`) of the same job is the same
run: it takes the lock over silently. The lock is released at exit (also on a config error,
a stop or a crash that Python sees; a SIGKILL leaves a stale lock, which the next launch
takes over).

Where flock works (local disks, most network file systems) the check-and-take runs under
an exclusive flock of the folder, so two launches at the same instant cannot both win.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = "distca.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0  # eight missed heartbeats (and a network file system's attribute cache): another host's


class RunDirBusy(ValueError):
    """The folder is held by a live run (a ValueError: reported as a config error, exit 2)."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or None
    where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return start is None or _proc_start(pid) in (None, start)


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "unknown time"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {}  # being written or damaged: judged by its age alone
    return holder if isinstance(holder, dict) else {}


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
            "started": time.time(), "job": os.environ.get("TORCHELASTIC_RUN_ID")}


def _stale_reason(holder: dict, path: Path) -> str | None:
    """Why the holder no longer runs (None: it does, or may)."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "released"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _alive(holder["pid"], holder.get("pid_start")):
            return "its process is gone"
        return None
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age / 60:.0f} min"
    return None


def _is_me(holder: dict) -> bool:
    return (holder.get("host"), holder.get("pid")) == (socket.gethostname(), os.getpid())


def _live_other(holder: dict | None, lock: Path) -> bool:
    """The lock belongs to another run that still runs (or may)."""
    if holder is None or _same_job_restart(holder) or _is_me(holder):
        return False
    return _stale_reason(holder, lock) is None


def _same_job_restart(holder: dict) -> bool:
    """A torchrun restart of the job that holds the lock (the same run, a new attempt)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return (bool(job) and job != "none" and holder.get("job") == job
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0")


@contextlib.contextmanager
def _exclusive(folder: Path):
    """An exclusive flock on the folder while the lock is checked and taken (a no-op where
    the file system refuses flock on a directory)."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunLock:
    """A held lock on one folder; `release()` (also at exit) removes it if it is still ours."""

    def __init__(self, folder: Path, created: Path | None):
        self.folder, self.path = folder, folder / LOCK_NAME
        self.created = created  # the topmost folder this launch created (None: it existed)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="distca-run-lock", daemon=True)
        self._beat.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def ours(self) -> bool:
        return _is_me(_read(self.path) or {})

    def release(self) -> None:
        """Remove the lock if it is still ours, and the folders this launch made if they are
        still empty (nothing was written there)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            if self.ours():
                self.path.unlink()
        _held.pop(str(self.folder), None)
        if self.created is not None:
            for folder in [self.folder, *self.folder.parents]:
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == self.created:
                    break


_held: dict[str, RunLock] = {}


def acquire(folder: str, what: str = "run_dir", warn=print) -> RunLock:
    """Take `folder`'s lock (creating the folder). RunDirBusy names the live holder; a
    ValueError names a folder that cannot be made or written; a stale lock is taken over
    and `warn` says whose it was. Re-entrant within one process."""
    path = Path(folder).resolve()
    if str(path) in _held:
        return _held[str(path)]
    for parent in path.parents:  # e.g. checkpoint.dir inside another live run's run dir
        if _live_other(holder := _read(parent / LOCK_NAME), parent / LOCK_NAME):
            raise RunDirBusy(f"{what}={folder} is inside {parent}, which another run uses ({_describe(holder)}); "
                             f"pick a {what} outside it")
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    me = _me()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with _exclusive(path):
            lock = path / LOCK_NAME
            holder = _read(lock)
            if _live_other(holder, lock):
                raise RunDirBusy(f"{what}={folder} is in use by another run ({_describe(holder)}; lock {lock}); "
                                 f"wait for it to end or stop it, or pick another {what}")
            if holder is not None and not (_same_job_restart(holder) or _is_me(holder)) and \
                    (reason := _stale_reason(holder, lock)) != "released":
                warn(f"distca: warning: {what}={folder} was locked by a run that ended without "
                     f"releasing it ({_describe(holder)}: {reason}); taking it over")
            tmp = path / f".{LOCK_NAME}.{me['host']}.{me['pid']}"
            tmp.write_text(json.dumps(me))
            os.replace(tmp, lock)
    except RunDirBusy:
        raise
    except OSError as e:
        raise ValueError(f"{what}={folder} is not a folder this process can create and write "
                         f"({e.strerror or e}); set {what} to a new or writable folder") from None
    held = _held[str(path)] = RunLock(path, created)
    return held


def release_all() -> None:
    """Release every lock this process holds (before an exit that skips atexit)."""
    for lock in list(_held.values()):
        lock.release()
