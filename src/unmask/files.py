"""How anything reaches the disk: atomic file writes, folders published whole, fsync.

Everything unmask writes that a user or a later run relies on (token stores, checkpoints,
the final model, configs, summaries) is built under a hidden temporary name, its contents
fsynced, and then renamed into place. A crash, a kill or a full disk therefore leaves
either the old version or the new one at the real name, never half of one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself is synced
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then every directory, deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file, fsync, rename: a crash never leaves half a file."""
    _write_atomically(Path(path), text.encode("utf-8"), 0o644)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(Path(path), data, 0o644)


def building_path(target: Path, tag: str = "building") -> Path:
    """A hidden sibling of `target` that is unique to this process: `.name.tag-PID`.

    Two processes building the same target never write into one folder.
    """
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_folder(building: Path, target: Path) -> None:
    """Make the finished folder `building` appear at `target`, replacing what was there.

    Every file is fsynced first, so that the folder is complete on disk before its name
    says so. Where the filesystem can, the two folders are exchanged in one atomic step;
    elsewhere the old one is renamed aside first and deleted last, so that at every moment
    the old or the new folder is whole under one of the two names (`recover_folder` puts an
    old one back if a crash fell between the two renames).
    """
    fsync_tree(building)
    if target.exists():
        retired = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        if _exchange(building, target):
            building.rename(retired)
        else:
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            building.rename(target)
        fsync_dir(target.parent)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        building.rename(target)
        fsync_dir(target.parent)


def recover_folder(target: Path) -> None:
    """Undo a replacement that a crash interrupted between its two renames."""
    if target.exists() or not target.parent.is_dir():
        return
    retired = sorted(target.parent.glob(f".{target.name}.replaced-*"))
    if retired:
        retired[-1].rename(target)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
