"""How anything reaches the disk: atomic file writes, folders published whole, fsync.

Everything unmask writes that a user or a later run relies on (token stores, checkpoints,
the final model, configs, summaries) is built under a hidden temporary name, its contents
fsynced, and then renamed into place. A crash, a kill or a full disk therefore leaves
either the old version or the new one at the real name, never half of one.
"""

from __future__ import annotations

import ctypes
import difflib
import errno
import fcntl
import functools
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from unmask.errors import UnmaskError

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def no_such_path(name: str, kind: str = "folder") -> str:
    """'NAME': no such folder (or `kind`), with the closest names in the nearest folder that exists."""
    path = Path(name).expanduser()
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        siblings = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    except OSError:
        siblings = []
    wanted = path.relative_to(parent).parts[0] if path.is_relative_to(parent) and path != parent else path.name
    close = difflib.get_close_matches(wanted, siblings, n=3, cutoff=0.6)
    shown = [str(parent / c) if str(parent) != "." else c for c in close]
    return f"'{name}': no such {kind}" + (f"; did you mean {' or '.join(shown)}?" if shown else "")


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
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask can only be read by setting it,
    which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: Path) -> None:
    """Give every file and folder below `folder` the modes a plain `open` would have: libraries
    that write through a private temporary file (safetensors) leave 0600, which another user
    of a shared folder cannot read."""
    mask = current_umask()
    kept = stat.S_ISGID | stat.S_ISVTX  # a shared folder's setgid (its group for new files) stays

    def folder_mode(path: Path) -> None:
        os.chmod(path, (0o777 & ~mask) | (os.stat(path).st_mode & kept))

    for root, folders, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)
        for name in folders:
            folder_mode(Path(root) / name)
    folder_mode(folder)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    atomic_write_chunks(path, [data], len(data), mode)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes], size: int | None = None, mode: int = 0o666) -> None:
    """Write `chunks` one after another through a temporary file, fsync, rename: a file of any
    size in bounded memory, and a crash (or a full disk) never leaves half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(path, path.name, size):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode & ~current_umask())  # mkstemp creates 0600; results are meant to be shared, as the umask says
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file, fsync, rename: a crash never leaves half a file."""
    _write_atomically(Path(path), text.encode("utf-8"), 0o666)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(Path(path), data, 0o666)


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_BUILDING = re.compile(r"^\.(?P<name>.+)\.(?:building|partial|replaced)-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)$")


def building_path(target: Path, tag: str = "building") -> Path:
    """A hidden sibling of `target` that is unique to this process: `.name.tag-HOST-PID`.

    Two processes building the same target never write into one folder, even on a
    filesystem that several machines share.
    """
    return target.with_name(f".{target.name}.{tag}-{_HOST}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_building(name: str) -> bool:
    """Whether a name is one `building_path` makes (a half-built sibling of some target)."""
    return _BUILDING.match(name) is not None


def remove_stale_building(folder: Path) -> list[Path]:
    """Delete hidden half-built folders that processes of this machine left when they died
    (a kill -9 mid-write). Another machine's, or a live process's, are left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _BUILDING.match(entry.name)
        if match and match["host"] == _HOST and not process_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


_NO_ROOM = {
    errno.ENOSPC: ("no space left", "disk full"),
    errno.EDQUOT: ("disk quota exceeded", "disk quota exceeded"),
    errno.EFBIG: ("file too large", "the file-size limit (ulimit -f) reached"),
}


def out_of_room(error: BaseException) -> int | None:
    """The errno of a write that found no room (ENOSPC a full disk, EDQUOT a quota, EFBIG this
    process's file-size limit), also when a library wraps the error in an exception of its own
    and keeps only its text; None for any other error."""
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        return error.errno
    text = str(error).lower()
    return next((code for code, (needle, _) in _NO_ROOM.items() if needle in text), None)


def readable_size(count: float) -> str:
    """A size people read at a glance: 12 bytes, 3.4 KB, 51.0 MB, 2.1 GB."""
    if count < 1024:
        return f"{count:,.0f} byte{'s' if count != 1 else ''}"
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 1024:,.1f} KB"


@contextmanager
def disk_full_guard(path: Path, what: str, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a full disk (or quota, or file-size limit) while writing `what` at `path` into one clear line (an UnmaskError)."""
    try:
        yield
    except BaseException as e:
        code = out_of_room(e)
        if code is None:
            raise
        need = f"it needs about {readable_size(needed_bytes)}, " if needed_bytes else ""
        raise UnmaskError(
            f"{path}: {_NO_ROOM[code][1]} while writing {what} ({need}{_room_left(path, code)}); nothing half-written was kept"
        ) from None


def _room_left(path: Path, code: int) -> str:
    """What the limit that was hit leaves: this process's file-size limit, or the free space there."""
    if code == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return f"this process may write files of up to {readable_size(limit)}"
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    return f"{readable_size(shutil.disk_usage(place).free if place.exists() else 0)} free there"


class FolderLock:
    """An exclusive lock, held on the file `path` while a process works on what it guards
    (a run folder's `.lock`, a store's `.NAME.lock` beside it).

    `flock` locks die with their process, so a killed run never leaves one stuck.
    """

    def __init__(self, path: Path, purpose: str, guards: Path | None = None, remove_when_done: bool = False):
        self.path = path
        self.purpose = purpose
        self.guards = guards or path.parent
        self.remove_when_done = remove_when_done  # for a lock file that sits among the user's own files
        self.handle = None
        self.unlocked = False  # True where the filesystem refused to lock
        self.made_folder = False  # whether `acquire` made the folder the lock is in

    def acquire(self) -> None:
        self.made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A raw descriptor, not a buffered file: on a full disk a buffered file keeps the
        # unwritten note and raises again on close, long after the lock stopped mattering.
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise UnmaskError(
                    f"{self.guards}: {holder} is using it right now; wait for it to finish, or choose another folder"
                ) from None
            except OSError as e:  # a filesystem mounted without locks (Lustre's noflock, some NFS): work on, and say so
                print(
                    f"warning: {self.path}: this filesystem cannot lock files ({e.strerror}); nothing stops a second "
                    f"process from using {self.guards} at the same time",
                    file=sys.stderr,
                )
                self.unlocked = True
            if self.unlocked or not self.remove_when_done or self._still_at_path(fd):
                break
            os.close(fd)  # the holder removed the file we locked as it finished: lock the new one
        try:  # who holds it, for the message a second process gets; the lock itself is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.purpose} (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)  # read by is_held
        except OSError:
            pass
        self.handle = fd

    def _still_at_path(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        locked = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)

    def release(self) -> None:
        if self.handle is not None:
            try:  # an empty lock file says nobody holds it (`unmask serve` reads it)
                os.ftruncate(self.handle, 0)
                if self.remove_when_done:  # while still locked, so no one can hold the file being removed
                    os.unlink(self.path)
            except OSError:
                pass
            if not self.unlocked:
                fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = None

    def release_after_failed_start(self) -> None:
        """Release, and remove the folder `acquire` made if nothing but the lock came to be in it:
        a start that failed leaves no empty run folder behind. The lock file goes while it is
        still held, so that no other process can take it in between and lose its folder."""
        folder = self.path.parent
        if self.handle is not None and self.made_folder and folder.is_dir() and [p.name for p in folder.iterdir()] == [self.path.name]:
            try:
                self.path.unlink()
                folder.rmdir()
            except OSError:  # something appeared in it meanwhile: leave it
                pass
        self.release()

    @staticmethod
    def is_held(path: Path) -> bool:
        """Whether the lock file at `path` names a holder that is still running, read from the
        note `acquire` writes (never by taking the lock, which could turn a starting run away).
        Another machine's holder cannot be checked from here, so its note is trusted."""
        try:
            holder = path.read_text(encoding="utf-8")
        except OSError:
            return False
        match = re.search(r"\(pid (\d+) on (\S+)\)", holder)
        if match is None:
            return False
        return match[2] != socket.gethostname() or process_alive(int(match[1]))

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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
    follow_umask(building)
    fsync_tree(building)
    if target.exists():
        retired = building_path(target, "replaced")
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


@contextmanager
def building(target: Path, what: str, needed_bytes: int | None = None, tag: str = "partial") -> Iterator[Path]:
    """Build the folder `target` whole or not at all.

    Yields an empty hidden folder of this process's own (`building_path`); when the block
    ends normally it is published as `target` (`publish_folder`, replacing what was there),
    and when it raises, the hidden folder is removed and `target` is left as it was. A full
    disk while writing `what` becomes one clear line (`disk_full_guard`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = building_path(target, tag)
    remove_tree(folder)
    folder.mkdir()
    try:
        with disk_full_guard(folder, what, needed_bytes):
            yield folder
            publish_folder(folder, target)
    except BaseException:
        remove_tree(folder)
        raise


def read_json_lines(path: Path, after: int = 0, strict: bool = False) -> tuple[list[dict], int]:
    """The records of an append-only JSON Lines file from line `after` on, and the number of
    complete lines.

    A last line without its newline is still being written (or was torn by a crash): it is
    always left out. A complete line that is not a JSON object is skipped, or with `strict`
    an error naming it (for a reader who should look at the file).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return [], after
    complete = text[: text.rfind("\n") + 1].splitlines()
    records = []
    for number, line in enumerate(complete[after:], after + 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif strict:
            raise UnmaskError(f"{path}:{number}: not a JSON line")
    return records, len(complete)


def append_json_line(path: Path, record: dict) -> None:
    """Append one record and fsync it: a result that took minutes is on disk before it counts.
    A crash mid-write leaves a torn last line, which `read_json_lines` leaves out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(path, "a result line"), open(path, "a", encoding="utf-8") as f:
        if f.tell() and not path.read_bytes().endswith(b"\n"):
            f.write("\n")  # end a line a crash tore, so this record starts a line of its own
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def map_file(path: Path, dtype, offset: int = 0):
    """A read-only memory map of `path` (from byte `offset`) as a NumPy array that holds no file
    open: Python's mmap keeps a duplicate descriptor per map, so a store of thousands of shards
    (three maps a split, two splits, their indexes) would run out of the process's open files
    (`ulimit -n`, often 1,024). The map is released when the last view of it goes."""
    import numpy as np

    dtype = np.dtype(dtype)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size - offset
        if size < dtype.itemsize:
            return np.zeros(0, dtype=dtype)
        libc = _libc()
        if libc is None:  # no POSIX mmap through ctypes: NumPy's own map, which keeps the file open
            return np.memmap(f, dtype=dtype, mode="r", offset=offset)
        import mmap as mmap_module

        start = offset - offset % mmap_module.ALLOCATIONGRANULARITY
        length = size + (offset - start)
        address = libc.mmap(None, ctypes.c_size_t(length), mmap_module.PROT_READ, mmap_module.MAP_SHARED, f.fileno(), ctypes.c_long(start))
        if address in (None, ctypes.c_void_p(-1).value):
            code = ctypes.get_errno()
            raise OSError(code, f"cannot map {path}: {os.strerror(code)}")
    region = (ctypes.c_char * length).from_address(address)
    weakref.finalize(region, libc.munmap, ctypes.c_void_p(address), ctypes.c_size_t(length))
    array = np.frombuffer(region, dtype=dtype, count=size // dtype.itemsize, offset=offset - start)
    array.flags.writeable = False  # the pages are mapped read-only: a write would crash the process, not raise
    return array


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None
