"""Atomic writes and folders published whole."""

import gc
import os
from pathlib import Path

import numpy as np
import pytest

from unmask.config import UnmaskError
from unmask.storage import files
from unmask.storage.files import FolderLock, atomic_write_text, building_path, map_file, publish_folder, recover_folder


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "summary.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UnmaskError, match=r"config\.yaml: disk full while writing config\.yaml \(it needs about 3 bytes, [\d,.]+ [KMG]?B"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_folder_replaces_a_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    for version in ("v1", "v2"):
        building = building_path(target)
        building.mkdir()
        (building / "weights").write_text(version)
        publish_folder(building, target)
        assert (target / "weights").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "nothing left aside"


def test_building_paths_are_per_process_and_hidden(tmp_path):
    path = building_path(tmp_path / "store")
    assert path.name.startswith(".store.") and str(os.getpid()) in path.name


def test_recover_folder_puts_back_an_old_folder_a_crash_left_aside(tmp_path):
    aside = tmp_path / ".model.replaced-123"
    aside.mkdir()
    (aside / "weights").write_text("old")
    recover_folder(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "old"
    recover_folder(tmp_path / "model")  # nothing to do the second time
    assert (tmp_path / "model").is_dir()


def test_a_lock_refuses_a_second_holder_and_one_that_cleans_up_leaves_no_file(tmp_path):
    guarded = tmp_path / "store"
    first = FolderLock(tmp_path / ".store.lock", "unmask prepare", guards=guarded, remove_when_done=True)
    first.acquire()
    assert "unmask prepare (pid" in (tmp_path / ".store.lock").read_text()
    with pytest.raises(UnmaskError, match=r"store: unmask prepare \(pid \d+ .*is using it right now"):
        FolderLock(tmp_path / ".store.lock", "unmask prepare", guards=guarded).acquire()
    first.release()
    assert not (tmp_path / ".store.lock").exists()
    again = FolderLock(tmp_path / ".store.lock", "unmask prepare", guards=guarded, remove_when_done=True)
    again.acquire()
    again.release()


def test_a_lock_whose_file_was_replaced_while_waiting_locks_the_new_file(tmp_path, monkeypatch):
    """The holder removes its file as it finishes; a process that opened the old file just
    before must not think it holds the lock on the path."""
    path = tmp_path / ".store.lock"
    path.write_text("")
    lock = FolderLock(path, "unmask prepare", remove_when_done=True)
    real_open, swapped = os.open, []

    def open_then_swap(p, *a, **k):
        fd = real_open(p, *a, **k)
        if not swapped:  # the old holder finishes between our open and our flock
            swapped.append(True)
            os.unlink(p)
            Path(p).write_text("")
        return fd

    monkeypatch.setattr(os, "open", open_then_swap)
    lock.acquire()
    monkeypatch.undo()
    assert os.fstat(lock.handle).st_ino == os.stat(path).st_ino
    lock.release()


def test_a_filesystem_without_locks_gets_a_warning_and_the_work_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with FolderLock(tmp_path / ".lock", "unmask train", guards=tmp_path / "run", remove_when_done=True):
        pass
    err = capsys.readouterr().err
    assert "this filesystem cannot lock files (No locks available)" in err and "run at the same time" in err
    assert not (tmp_path / ".lock").exists()


def test_a_lock_is_held_while_its_named_process_lives(tmp_path):
    import socket
    import subprocess
    import sys

    lock = FolderLock(tmp_path / ".lock", "unmask train")
    lock.acquire()
    assert FolderLock.is_held(tmp_path / ".lock")
    lock.release()
    assert not FolderLock.is_held(tmp_path / ".lock"), "an empty note: nobody holds it"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / ".lock").write_text(f"unmask train (pid {dead} on {socket.gethostname()})")
    assert not FolderLock.is_held(tmp_path / ".lock"), "a dead process holds nothing"
    (tmp_path / ".lock").write_text("unmask train (pid 1 on another-machine)")
    assert FolderLock.is_held(tmp_path / ".lock"), "another machine's note is trusted"
    assert not FolderLock.is_held(tmp_path / "missing.lock")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_published_folders_and_atomic_files_follow_the_umask(tmp_path, umask):
    """safetensors (and mkstemp) write 0600; what unmask publishes is as readable as the umask allows."""
    import tempfile

    from safetensors.torch import save_file
    from torch import zeros

    previous = os.umask(umask)
    try:
        with files.building(tmp_path / "model", "a model") as folder:
            save_file({"w": zeros(2)}, str(folder / "model.safetensors"))
            (folder / "sub").mkdir()
            fd, private = tempfile.mkstemp(dir=folder / "sub")
            os.close(fd)
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(previous)
    assert files.current_umask() == previous
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    for name, mode in modes.items():
        expected = (0o777 if (tmp_path / name).is_dir() else 0o666) & ~umask
        assert mode == expected, f"{name}: {mode:o}, the umask {umask:03o} says {expected:o}"
    assert len(modes) == 5  # model/, its weights, sub/, the private file, summary.json


def test_a_mapped_file_holds_no_descriptor_is_read_only_and_outlives_its_first_view(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(1000, dtype=np.int64).tofile(path)
    maps = [map_file(path, np.int64) for _ in range(200)]

    def open_on(target: Path) -> int:  # by what each descriptor points at: other threads' files do not count
        found = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                found += os.readlink(f"/proc/self/fd/{fd}") == str(target)
            except OSError:  # closed meanwhile
                pass
        return found

    assert open_on(path) == 0, "a store of thousands of shards must not run out of open files"
    kept_open = np.memmap(path, dtype=np.int64, mode="r")
    assert open_on(path) == 1 and len(kept_open) == 1000, "the check sees a descriptor NumPy's map keeps"
    del kept_open
    assert maps[7][-1] == 999 and len(maps[7]) == 1000
    assert map_file(path, np.int64, offset=64)[:2].tolist() == [8, 9], "from a header's end"
    view = maps[0][10:13]
    del maps
    gc.collect()
    assert view.tolist() == [10, 11, 12], "a view keeps the map"
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 3
    (tmp_path / "empty").write_bytes(b"")
    assert len(map_file(tmp_path / "empty", np.int64)) == 0
