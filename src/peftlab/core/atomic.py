"""Atomic writes: a reader sees the old file or folder, or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from peftlab.core.errors import UserError


class UnsafePathError(UserError, ValueError):
    """A name taken from data would put a file outside the folder it belongs in."""


class OutOfSpaceError(UserError, OSError):
    """The disk (or the user's quota) filled up while a file was written; what was there before is intact."""


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in OUT_OF_SPACE
    text = str(error)  # safetensors' writer reports the OS error inside its own message
    return type(error).__name__ == "SafetensorError" and ("No space left" in text or "StorageFull" in text
                                                          or "Disk quota" in text)


@contextlib.contextmanager
def out_of_space_as_user_error(path: Path, replaced: bool = True) -> Iterator[None]:
    """Turn a full disk or quota while writing ``path`` into a :class:`OutOfSpaceError` that says so."""
    try:
        yield
    except BaseException as error:
        if not _out_of_space(error) or isinstance(error, OutOfSpaceError):
            raise
        kept = f"; nothing was replaced: the previous {path.name}, if any, is intact" if replaced else ""
        raise OutOfSpaceError(f"no space left on the device (or the quota) while writing {path}{kept}. Free "
                              f"some space, or write to another disk") from error


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def process_umask() -> int:
    """The process's umask. Linux shows it in ``/proc``; elsewhere ``os.umask`` must set it to read it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: str | os.PathLike, descriptor: int | None = None) -> None:
    """``tempfile`` makes private files (0600) and folders (0700); what we put in place is created as
    ``open``/``mkdir`` would create it, so colleagues sharing a folder can read it as they read its neighbours."""
    mode = (0o666 if descriptor is not None else 0o777) & ~process_umask()
    if descriptor is not None and hasattr(os, "fchmod"):
        os.fchmod(descriptor, mode)
    else:
        os.chmod(path, mode)


def _staged(path: Path, data: bytes) -> str:
    """``data`` written and synced to a hidden temporary file beside ``path``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _follow_umask(temporary, fd)
        with out_of_space_as_user_error(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_files_together({Path(path): data})


def write_files_together(contents: dict[Path, bytes]) -> None:
    """Write several files so that a kill leaves the old set or the new one: every file is staged and synced
    first, then all are renamed in at once (a kill can split the set only inside that loop of renames)."""
    staged: dict[Path, str] = {}
    try:
        for path, data in contents.items():
            staged[path] = _staged(path, data)
        for path, temporary in staged.items():
            os.replace(temporary, path)
    except BaseException:
        for temporary in staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
    for folder in {path.parent for path in contents}:
        _fsync_directory(folder)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def recover_directory(path: str | os.PathLike, wait_for_writer: float = 2.0) -> None:
    """If a kill fell between retiring the old folder and renaming the new one in, put the old one back.

    A retired folder whose writer is still alive is mid-swap, not abandoned: wait for the swap first.
    """
    path = Path(path)
    deadline = time.monotonic() + wait_for_writer
    while not path.exists():
        retired = sorted(path.parent.glob(f".{path.name}.*.old.tmp"))
        if not retired:
            return
        if _writer_alive(retired[-1]) and time.monotonic() < deadline:
            time.sleep(0.01)
            continue
        with contextlib.suppress(FileNotFoundError, OSError):
            os.replace(retired[-1], path)
        return


def _writer_alive(retired: Path) -> bool:
    pid = retired.name.rsplit(".", 3)[-3]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_child(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` for a name that comes from data (a run, checkpoint or adapter name), refusing any
    name that would land outside ``root`` (absolute paths, ``..``, drive letters, empty names)."""
    root_path = Path(root)
    if (
        not name
        or "\x00" in name
        or Path(name).is_absolute()
        or root_path.resolve() not in (root_path / name).resolve().parents
    ):
        raise UnsafePathError(
            f"name {name!r} would be written outside {root_path}; use a plain relative name "
            f"without '..' or a leading '/'"
        )
    return root_path / name


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for file in files:
            with open(os.path.join(folder, file), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(Path(folder))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole.

    Files already in ``path`` that the writer does not produce are dropped, as with a fresh save.
    On an exception (or a kill) ``path`` is untouched; stale ``.tmp`` siblings of dead writers are removed
    on the next save. Writers of the same ``path`` in several processes (sweep shards building one shared
    model folder) leave each other's staging alone, and the last to finish wins whole.
    """
    path = Path(path)
    if _is_non_folder(path):
        raise UserError(f"{path} is a file, not a folder: not replacing it with a folder; remove it or choose "
                        f"another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if not _writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        _follow_umask(staging)
        with out_of_space_as_user_error(path):
            yield staging
            _fsync_tree(staging)
        with _swap_lock(path.parent):
            _swap_in(staging, path)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _swap_lock(folder: Path) -> Iterator[None]:
    """Serialise the swaps of the writers in ``folder``: an exclusive ``flock`` on the folder itself, which
    leaves no lock file behind and is released when its holder dies. Without ``fcntl`` (Windows) or on a
    filesystem that refuses the lock, the swap's own retries are all there is."""
    descriptor = _lock_folder(folder)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _lock_folder(folder: Path) -> int | None:
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _swap_in(staging: Path, path: Path, attempts: int = 5) -> None:
    """Rename ``staging`` to ``path``, retiring whatever is there; a writer that does not take
    :func:`_swap_lock` may put its own folder at ``path`` between the two renames (the rename then fails
    and is tried again)."""
    retired = path.parent / f".{path.name}.{os.getpid()}.old.tmp"
    for attempt in range(attempts):
        if path.exists():
            shutil.rmtree(retired, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):  # another writer retired it first
                os.replace(path, retired)
        try:
            os.replace(staging, path)
            break
        except OSError:
            if attempt == attempts - 1 or not path.exists():
                raise
    shutil.rmtree(retired, ignore_errors=True)


def _is_non_folder(path: Path) -> bool:
    """Whether something other than a folder is at ``path``, from one ``stat``: another writer may be
    swapping a folder in at that moment, and ``exists()`` then ``is_dir()`` could see it gone in between."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
