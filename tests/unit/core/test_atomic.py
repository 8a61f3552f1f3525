"""Owned temporaries (cyclegan_core.atomic): their names, the staleness rule and the sweep.

Dead owners are real processes: a forked child that exited (and was reaped, or not: a zombie).
The SIGKILL scenarios across real writers are in tests/integration/test_crash_leftovers.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cyclegan_core.atomic import (
    FOREIGN_MAX_AGE_S,
    UNLOCKED_GRACE_S,
    TempOwner,
    atomic_path,
    hold_lock,
    is_stale,
    owned_temp,
    parse_temp_name,
    pid_running,
    replace_folder,
    sweep_stale_temps,
    temp_name,
    this_host,
    write_json_atomic,
)

HOST = "node-1.example"


def exited_child(*, reap: bool = True) -> int:
    """The pid of a forked child that has exited (reaped unless told not to)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    if reap:
        os.waitpid(pid, 0)
    return pid


@pytest.fixture()
def dead_pid() -> int:
    return exited_child()


def named_temp(folder: Path, name: str, *, pid: int, host: str | None = None, suffix: str = "",
               folder_kind: bool = False, age_s: float = 0.0) -> Path:
    """A temporary with the name a process ``pid`` on ``host`` would have given it, last modified
    ``age_s`` ago (what a killed writer leaves)."""
    path = folder / f".{name}.tmp-{host or this_host()}-{pid}-0123abcd{suffix}"
    if folder_kind:
        path.mkdir()
        (path / "part.bin").write_bytes(b"x")
    else:
        path.write_bytes(b"half")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["manifest.json", "trainA.npy", "G_AB", "a.tmp-b-1-0123abcd", "naïve name"])
@pytest.mark.parametrize("suffix", ["", ".tmp", ".npy"])
def test_a_temp_name_carries_its_destination_host_and_pid(name: str, suffix: str) -> None:
    made = temp_name(name, suffix=suffix)
    assert made.startswith(f".{name}.tmp-{this_host()}-{os.getpid()}-") and made.endswith(suffix)
    assert parse_temp_name(made) == TempOwner(name=name, host=this_host(), pid=os.getpid())


def test_temp_names_are_unique() -> None:
    assert len({temp_name("x") for _ in range(200)}) == 200


def test_a_host_name_with_hyphens_and_dots_parses() -> None:
    assert parse_temp_name(".index.json.tmp-ip-10-0-3-7.ec2.internal-4242-deadbeef.tmp") == TempOwner(
        name="index.json", host="ip-10-0-3-7.ec2.internal", pid=4242)


@pytest.mark.parametrize("other", [
    ".manifest.json.k3j2_9x.tmp",  # tempfile.mkstemp's names (before owned temporaries)
    ".trainA.npy.abcd1234.npy", ".G_AB.tmp-1a2b3c4d", "manifest.json", ".lock", ".staging",
    ".x.tmp-host-12-0123abcd-extra", ".x.tmp-host-12-0123ABCD", ".x.tmp-host--0123abcd",
])
def test_other_names_are_not_temporaries(other: str) -> None:
    assert parse_temp_name(other) is None


def test_a_long_destination_name_is_cut_to_fit_a_file_name() -> None:
    made = temp_name("n" * 300, suffix=".npy")
    assert len(made.encode()) < 255
    assert parse_temp_name(made).name == "n" * 80


def test_a_suffix_is_one_extension() -> None:
    with pytest.raises(ValueError, match="suffix"):
        temp_name("x", suffix="-part")


# --- the rule ------------------------------------------------------------------------------------


def owner(pid: int = 100, host: str = HOST) -> TempOwner:
    return TempOwner(name="manifest.json", host=host, pid=pid)


def running(*pids: int) -> Callable[[int], bool]:
    return lambda pid: pid in pids


def test_a_locked_temporary_is_live_whatever_its_pid_host_and_age() -> None:
    for host, pids in ((HOST, ()), (HOST, (100,)), ("other-host", ())):
        assert not is_stale(owner(host=host), locked=True, age_s=1e9, host=HOST, running=running(*pids))


def test_an_unlocked_temporary_of_a_dead_pid_on_this_host_is_stale() -> None:
    assert is_stale(owner(), locked=False, age_s=0.0, host=HOST, running=running())
    assert is_stale(owner(), locked=None, age_s=0.0, host=HOST, running=running())


def test_a_running_pid_keeps_its_unlocked_temporary_for_the_grace_only_when_locks_work() -> None:
    # unlocked while its pid runs: the owner between creating and locking it, or a reused pid
    assert not is_stale(owner(), locked=False, age_s=UNLOCKED_GRACE_S - 1, host=HOST, running=running(100))
    assert is_stale(owner(), locked=False, age_s=UNLOCKED_GRACE_S + 1, host=HOST, running=running(100))
    # no locks on this filesystem: a running pid is all there is to go by
    assert not is_stale(owner(), locked=None, age_s=1e9, host=HOST, running=running(100))


def test_another_hosts_temporary_goes_only_when_old() -> None:
    other = owner(host="node-2")
    assert not is_stale(other, locked=False, age_s=FOREIGN_MAX_AGE_S - 1, host=HOST, running=running())
    assert not is_stale(other, locked=None, age_s=FOREIGN_MAX_AGE_S - 1, host=HOST, running=running())
    assert is_stale(other, locked=False, age_s=FOREIGN_MAX_AGE_S + 1, host=HOST, running=running(100))
    assert not is_stale(other, locked=False, age_s=10.0, host=HOST, running=running(), foreign_max_age_s=60)
    assert is_stale(other, locked=False, age_s=61.0, host=HOST, running=running(), foreign_max_age_s=60)


def test_pid_running_sees_this_process_and_not_an_exited_or_zombie_child() -> None:
    assert pid_running(os.getpid())
    assert not pid_running(exited_child())
    assert not pid_running(0) and not pid_running(-1)
    zombie = exited_child(reap=False)
    try:
        deadline = time.monotonic() + 10
        while pid_running(zombie) and time.monotonic() < deadline:
            time.sleep(0.01)  # the child is a zombie once it has exited; until then it runs
        assert not pid_running(zombie)
    finally:
        os.waitpid(zombie, 0)


# --- the sweep -----------------------------------------------------------------------------------


def test_sweep_removes_a_dead_processes_files_and_folders(tmp_path: Path, dead_pid: int) -> None:
    stale = [named_temp(tmp_path, "manifest.json", pid=dead_pid, suffix=".tmp"),
             named_temp(tmp_path, "G_AB", pid=dead_pid, folder_kind=True)]
    kept = [tmp_path / "manifest.json", tmp_path / ".manifest.json.k3j2_9x.tmp", tmp_path / ".lock"]
    for path in kept:
        path.write_text("{}")
    assert sorted(sweep_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_sweep_keeps_this_processes_temporaries(tmp_path: Path) -> None:
    with owned_temp(tmp_path, "trainA.npy", suffix=".npy") as live_file, \
            owned_temp(tmp_path, "G_AB", folder=True) as live_folder:
        os.utime(live_file, (0, 0))  # old, and its pid runs: the lock is what keeps it
        assert sweep_stale_temps(tmp_path) == []
        assert live_file.is_file() and live_folder.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_an_unlocked_temporary_of_a_reused_pid(tmp_path: Path) -> None:
    reused = named_temp(tmp_path, "index.json", pid=os.getpid(), age_s=UNLOCKED_GRACE_S + 5)
    young = named_temp(tmp_path, "other.json", pid=os.getpid())
    assert sweep_stale_temps(tmp_path) == [reused]
    assert young.exists()


def test_sweep_keeps_a_locked_temporary_of_a_dead_pid(tmp_path: Path, dead_pid: int) -> None:
    """What a forked child (or a process in another pid namespace) still writes is kept."""
    path = named_temp(tmp_path, "trainB.npy", pid=dead_pid, suffix=".npy")
    with hold_lock(path, folder=False):
        assert sweep_stale_temps(tmp_path) == []
    assert sweep_stale_temps(tmp_path) == [path]


def test_sweep_leaves_another_hosts_temporaries_until_they_are_old(tmp_path: Path, dead_pid: int) -> None:
    young = named_temp(tmp_path, "a.json", pid=dead_pid, host="node-2")
    old = named_temp(tmp_path, "b.json", pid=dead_pid, host="node-2", age_s=FOREIGN_MAX_AGE_S + 60)
    assert sweep_stale_temps(tmp_path) == [old]
    assert young.exists()


def test_sweep_by_name_touches_only_that_destinations_temporaries(tmp_path: Path, dead_pid: int) -> None:
    mine = named_temp(tmp_path, "export", pid=dead_pid, folder_kind=True)
    other = named_temp(tmp_path, "export-2", pid=dead_pid, folder_kind=True)
    assert sweep_stale_temps(tmp_path, name="export") == [mine]
    assert other.exists()


def test_sweep_never_follows_or_removes_a_symlink(tmp_path: Path, dead_pid: int) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data").write_text("keep")
    link = tmp_path / f".x.tmp-{this_host()}-{dead_pid}-0123abcd"
    link.symlink_to(target)
    assert sweep_stale_temps(tmp_path) == []
    assert link.is_symlink() and (target / "data").read_text() == "keep"


def test_sweep_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert sweep_stale_temps(tmp_path / "absent") == []


# --- writers -------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "manifest.json"
    write_json_atomic(dest, {"a": 1})
    write_json_atomic(dest, {"a": 2})
    assert dest.read_text() == '{"a": 2}'
    assert [p.name for p in dest.parent.iterdir()] == ["manifest.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "index.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        assert parse_temp_name(tmp.name).pid == os.getpid()
        raise RuntimeError("disk full")
    assert dest.read_text() == "old" and list(tmp_path.iterdir()) == [dest]


@pytest.fixture()
def built(tmp_path: Path) -> Iterator[Path]:
    with owned_temp(tmp_path, "out", folder=True) as build:
        (build / "new.txt").write_text("new")
        yield build


def test_replace_folder_swaps_in_the_new_folder_and_removes_the_old(tmp_path: Path, built: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    replace_folder(built, dest)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_folder_refuses_a_file(tmp_path: Path, built: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FileExistsError, match="not a folder"):
        replace_folder(built, tmp_path / "out")


def test_ingest_sweeps_its_root_and_every_decoded_cache_folder(tmp_path: Path, dead_pid: int) -> None:
    from cyclegan_core.data.cache import cache_dir
    from pipelines.ingest.download import sweep_dead_temps

    stale = [named_temp(tmp_path, "manifest.json", pid=dead_pid, suffix=".tmp")]
    for load_size in (32, 286):  # the decoded cache's own folders, whatever size this run decodes at
        cache_dir(tmp_path, load_size).mkdir(parents=True)
        stale.append(named_temp(cache_dir(tmp_path, load_size), "trainA.npy", pid=dead_pid, suffix=".npy"))
    with owned_temp(cache_dir(tmp_path, 32), "trainB.npy", suffix=".npy") as live:
        assert sweep_dead_temps(tmp_path) == 3
        assert live.exists() and not any(path.exists() for path in stale)
