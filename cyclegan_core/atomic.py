"""Atomic writes through owned temporaries, and the sweep that removes those a dead process left.

Every writer builds its file or folder under a temporary sibling named ``.<name>.tmp-<host>-<pid>-<hex8>``
(plus a suffix for files), holds an advisory ``flock`` on it while it exists, and renames it over the
destination once complete: a reader sees the old file or the new one, never half of one. A failed write
removes its temporary in ``finally``; SIGKILL skips that, so each run calls ``sweep_stale_temps`` on the
folders it writes to.

When a temporary is stale (``is_stale``): the kernel drops a process's locks when it dies, whatever its
pid becomes later, so a temporary whose lock another process holds is live and kept. On this host an
unlocked one is stale when its pid is not running; when the pid is running (the pid was reused, or the
owner is in the instant between creating and locking it) only once it is older than
``UNLOCKED_GRACE_S``. Where the filesystem refuses locks the pid alone decides. A temporary from another
host (shared storage) is removed only when older than ``FOREIGN_MAX_AGE_S``; a pid says nothing there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

UNLOCKED_GRACE_S = 60.0
FOREIGN_MAX_AGE_S = 3 * 24 * 3600.0
SCRATCH_PREFIX = "cyclegan-"
_NAME_CHARS = 80  # of the destination's name kept in a temporary's name (file names stop at 255 bytes)
_TEMP_NAME = re.compile(
    r"\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?", re.DOTALL
)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)


@dataclass(frozen=True)
class TempOwner:
    """What a temporary's name says: the destination it was for, the host and pid that made it."""

    name: str
    host: str
    pid: int


def this_host() -> str:
    """This machine's name as temporaries carry it (characters outside ``[A-Za-z0-9._-]`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63] or "localhost"


def temp_name(name: str, *, suffix: str = "") -> str:
    """``.<name>.tmp-<host>-<pid>-<random hex8><suffix>``, the name of a temporary for ``name``."""
    if suffix and not re.fullmatch(r"\.[A-Za-z0-9]+", suffix):
        raise ValueError(f"a temporary's suffix is a dot and letters or digits (like '.npy'), got {suffix!r}")
    return f".{name[:_NAME_CHARS]}.tmp-{this_host()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def parse_temp_name(filename: str) -> TempOwner | None:
    """The owner of a temporary named by ``temp_name``; None for any other name."""
    match = _TEMP_NAME.fullmatch(filename)
    if match is None:
        return None
    return TempOwner(name=match["name"], host=match["host"], pid=int(match["pid"]))


def pid_running(pid: int) -> bool:
    """True when a process with this pid exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS) or it just exited: kill(0) said it ran
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])  # zombie, dead


def is_stale(owner: TempOwner, *, locked: bool | None, age_s: float, host: str,
             running: Callable[[int], bool] = pid_running, foreign_max_age_s: float = FOREIGN_MAX_AGE_S) -> bool:
    """The sweep's rule (module docstring). ``locked``: another process holds the temporary's lock
    (None: the filesystem cannot tell); ``age_s``: seconds since it was last modified."""
    if locked:
        return False
    if owner.host != host:
        return age_s > foreign_max_age_s
    if not running(owner.pid):
        return True
    return locked is False and age_s > UNLOCKED_GRACE_S


def _open_for_lock(path: Path, *, folder: bool) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECTORY if folder else 0)
    return os.open(path, flags)


def _lock(fd: int, *, wait: bool) -> bool | None:
    """Take the exclusive lock on ``fd``: True when taken, False when another process holds it, None
    when the filesystem does not support locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return None
        raise
    return True


def _remove(path: Path, *, folder: bool) -> None:
    if folder:
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold_lock(path: Path, *, folder: bool) -> Iterator[None]:
    """Hold the lock of an existing file or folder (it marks a temporary as live while it has its name)."""
    fd = _open_for_lock(path, folder=folder)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the block: one process at a time
    builds what the others then read (a cache entry); on a filesystem without locks, no exclusion."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def owned_temp(parent: str | os.PathLike[str], name: str, *, suffix: str = "",
               folder: bool = False) -> Iterator[Path]:
    """Create a locked temporary file (or empty folder) named ``temp_name(name)`` in ``parent``.

    It is removed on exit unless the block moved it away; the lock is released last, so a sweep never
    finds it unlocked while this process still owns it.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / temp_name(name, suffix=suffix)
    if folder:
        path.mkdir(mode=0o700)
        fd = _open_for_lock(path, folder=True)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _lock(fd, wait=True)  # waits only while a sweep looks at it
        yield path
    finally:
        try:
            _remove(path, folder=folder)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; once the block succeeds it replaces ``dest``."""
    dest = Path(dest)
    with owned_temp(dest.parent, dest.name, suffix=suffix) as tmp:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)


def write_json_atomic(path: str | os.PathLike[str], payload: object, *, indent: int | None = None) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent))


def replace_folder(build: Path, dest: Path) -> None:
    """Move the complete folder ``build`` to ``dest``. An existing ``dest`` is first renamed to a locked
    temporary, put back if the move fails and removed once it succeeds."""
    if not dest.exists():
        os.replace(build, dest)
        return
    if not dest.is_dir() or dest.is_symlink():
        raise FileExistsError(f"{dest} exists and is not a folder; refusing to replace it with a folder")
    retired = dest.with_name(temp_name(dest.name, suffix=".old"))
    with hold_lock(dest, folder=True):
        os.replace(dest, retired)
        try:
            os.replace(build, dest)
        except OSError:
            os.replace(retired, dest)
            raise
        shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def _lock_state(path: Path, *, folder: bool) -> Iterator[bool | None]:
    """Yield whether another process holds ``path``'s lock, holding it meanwhile when nobody did."""
    fd = _open_for_lock(path, folder=folder)
    try:
        taken = _lock(fd, wait=False)
        yield None if taken is None else not taken
    finally:
        os.close(fd)


def sweep_stale_temps(folder: str | os.PathLike[str], *, name: str | None = None,
                      foreign_max_age_s: float = FOREIGN_MAX_AGE_S) -> list[Path]:
    """Remove the stale temporaries directly inside ``folder`` (only those for ``name`` when given);
    returns what was removed. One listing of ``folder``; names of any other form, symlinks and
    entries that vanish meanwhile are left alone."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    host, now, removed = this_host(), time.time(), []
    wanted = None if name is None else name[:_NAME_CHARS]
    for entry in entries:
        owner = parse_temp_name(entry.name)
        if owner is None or (wanted is not None and owner.name != wanted):
            continue
        path = Path(entry.path)
        try:
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                continue
            is_folder = entry.is_dir(follow_symlinks=False)
            age_s = now - entry.stat(follow_symlinks=False).st_mtime
            with _lock_state(path, folder=is_folder) as locked:
                if not is_stale(owner, locked=locked, age_s=age_s, host=host,
                                foreign_max_age_s=foreign_max_age_s):
                    continue
                _remove(path, folder=is_folder)
        except OSError as exc:  # vanished, replaced by a symlink, not ours to read: not this sweep's
            logger.debug("left %s alone: %s", path, exc)
            continue
        logger.info("removed %s, left by process %d on %s", path, owner.pid, owner.host)
        removed.append(path)
    return removed


@contextlib.contextmanager
def scratch_folder(purpose: str, *, name: str) -> Iterator[Path]:
    """An owned temporary folder in ``<system temp>/cyclegan-<purpose>/`` (stale ones there swept first)."""
    parent = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{purpose}"
    sweep_stale_temps(parent)
    with owned_temp(parent, name, folder=True) as path:
        yield path
