"""One output policy for every command that writes (train, merge, export, import, bench, report, eval).

Before any work starts, a command calls :func:`claim_output` with the path it will write and a description
of what it writes there (:class:`OutputKind`):

* an existing file, or a folder that already holds files, is refused unless ``overwrite`` (or ``resume``,
  for commands that continue their own earlier output: ``train --resume``, ``bench``);
* with ``overwrite``, only what the command itself writes is replaced: a folder that also holds anything
  else (``notes.txt``, ``train.py``) is refused, and the message names those entries;
* an output is never one of the command's inputs, inside one, or around one (replacing it would delete it);
* a file where a folder goes (or the reverse) is refused, and the nearest existing folder must accept a new
  file: a probe file is created there and removed, so permissions, read-only mounts and quotas all show
  (an unnamed file where the filesystem allows, so a kill leaves no probe behind).

The replacement itself is atomic where the command writes one whole thing (:func:`atomic_directory`);
``train --overwrite``, which writes for hours, removes only the previous run's own entries
(:func:`remove_owned`) once the new run has loaded.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from peftlab.core.errors import UserError, few

PROBE_PREFIX = ".peftlab-write-check."
REMOVED_PREFIX = ".peftlab-removed."
HIDDEN_TEMPORARY = (".*.tmp", f"{PROBE_PREFIX}*", f"{REMOVED_PREFIX}*")  # what an interrupted write leaves


class OutputError(UserError, ValueError):
    """An output path that a command must not (or cannot) write: what is wrong, where, and the fix."""


@dataclass(frozen=True, kw_only=True)
class OutputKind:
    """What a command writes at its output path."""

    command: str  # as the user typed it: "peftlab merge"
    flag: str  # how the user named the path: "--output", "DST"
    folder: bool = True  # a folder (False: one file)
    owns: tuple[str, ...] = ()  # glob patterns of the entries the command writes inside the folder
    resumable: bool = False  # the command continues its own earlier output with --resume

    def owned(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*self.owns, *HIDDEN_TEMPORARY))


def claim_output(path: str | os.PathLike, kind: OutputKind, *, overwrite: bool = False, resume: bool = False,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Check that ``kind.command`` may write ``path`` (see the module's policy); returns it resolved.

    ``inputs`` maps how the user named each input (``"--adapter"``) to its path; ``None`` paths are skipped.
    """
    given = Path(path).expanduser()
    target = given.resolve()
    where = f"{kind.flag} {given}"
    if target.parent == target:
        raise OutputError(f"{where} is the filesystem root; give a folder of its own")
    _refuse_overlap(given, target, kind, inputs or {})
    if target.exists():
        if kind.folder:
            _check_existing_folder(target, kind, where, overwrite=overwrite, resume=resume)
        elif target.is_dir():
            raise OutputError(f"{where} is a folder; give the path of a file to write")
        elif not overwrite:
            raise OutputError(f"{where} already exists; pass --overwrite to replace it, or choose another path")
    check_writable(target, kind, where)
    return target


def _check_existing_folder(target: Path, kind: OutputKind, where: str, *, overwrite: bool, resume: bool) -> None:
    if not target.is_dir():
        raise OutputError(f"{where} is a file, not a folder; give a new or empty folder (or remove the file)")
    entries = sorted(entry.name for entry in target.iterdir())
    if not entries or resume:
        return
    if not overwrite:
        resume_hint = "--resume to continue the run there, " if kind.resumable else ""
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        raise OutputError(f"{where} already holds {count} ({few(entries)}); pass {resume_hint}"
                          f"--overwrite to replace what {kind.command} wrote there, or choose a new or empty folder")
    foreign = [name for name in entries if not kind.owned(name)]
    if foreign:
        raise OutputError(f"{where} holds entries that {kind.command} does not write ({few(foreign)}); --overwrite "
                          f"replaces only the command's own files: move those away, or choose another folder")


def _refuse_overlap(given: Path, target: Path, kind: OutputKind,
                    inputs: Mapping[str, str | os.PathLike | None]) -> None:
    for flag, value in inputs.items():
        if value is None:
            continue
        source = Path(value).expanduser().resolve()
        if source == target:
            relation = "is"
        elif source in target.parents:
            relation = "is inside"
        elif target in source.parents:
            relation = "holds"
        else:
            continue
        raise OutputError(f"{kind.flag} {given} {relation} the input {flag} {value}; writing it "
                          f"would destroy what is being read. Choose an output outside the input")


def check_writable(target: Path, kind: OutputKind, where: str) -> None:
    """Create and remove a probe file in each folder the command will create entries in: the output folder
    itself when it exists, and the nearest existing folder above it (new folders, atomic replacement)."""
    folders = [target] if kind.folder and target.is_dir() else []
    above = target.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise OutputError(f"{where}: {above} is a file, so no folder can be made under it; choose another path")
    folders.append(above)
    for folder in folders:
        try:
            _probe(folder)
        except OSError as error:
            raise OutputError(f"{where}: cannot write in {folder} ({error.strerror or error}); choose a folder "
                              f"you can write to, or fix its permissions") from None


def _probe(folder: Path) -> None:
    """Create a file in ``folder`` and remove it. Where the filesystem allows, the file never has a name
    (``O_TMPFILE``), so even a SIGKILL leaves nothing behind; elsewhere a named probe is removed at once."""
    if hasattr(os, "O_TMPFILE"):
        try:
            os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    descriptor, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    try:
        os.close(descriptor)
    finally:  # an interrupt (SIGINT/SIGTERM raise here) between the probe's creation and its removal
        with contextlib.suppress(OSError):
            os.unlink(probe)


def remove_owned(folder: str | os.PathLike, kind: OutputKind) -> list[str]:
    """Remove the entries of ``folder`` that ``kind`` owns (the previous output, for ``--overwrite``), leaving
    anything else; each is renamed away first, so a kill never leaves a half-deleted entry under its name.
    Returns the names removed."""
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()):
        if not kind.owned(entry.name) or entry.name.startswith(PROBE_PREFIX):
            continue
        retired = entry
        if not entry.name.startswith(REMOVED_PREFIX):
            retired = folder / f"{REMOVED_PREFIX}{entry.name}"
            _remove(retired)  # the remains of an earlier removal a kill interrupted
            os.replace(entry, retired)
        _remove(retired)
        removed.append(entry.name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
