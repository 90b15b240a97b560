"""atomic_directory with several writers of one folder (sweep shards building a shared model folder)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.core.atomic import atomic_directory


def save(path: Path, text: str) -> None:
    with atomic_directory(path) as staging:
        (staging / "a.txt").write_text(text)
        (staging / "b.txt").write_text(text)


def test_a_live_writers_staging_survives_and_a_dead_ones_is_cleared(tmp_path):
    target = tmp_path / "model"
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    live = tmp_path / f".model.{os.getppid()}.abc123.tmp"  # pytest's parent process: alive
    dead = tmp_path / f".model.{dead_pid}.def456.tmp"
    for staging in (live, dead):
        staging.mkdir()
        (staging / "a.txt").write_text("half")
    save(target, "whole")
    assert live.is_dir(), "another live writer's staging folder was deleted under it"
    assert not dead.exists(), "a dead writer's staging folder was left behind"
    assert (target / "a.txt").read_text() == "whole"


def _writer(path: str, name: str, rounds: int, errors) -> None:
    try:
        for round_ in range(rounds):
            save(Path(path), f"{name}-{round_}")
    except BaseException as error:  # reported to the parent, which fails the test
        errors.put(f"{name}: {type(error).__name__}: {error}")


def test_concurrent_writers_of_one_folder_all_succeed_and_leave_one_whole_save(tmp_path):
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    writers = [context.Process(target=_writer, args=(str(tmp_path / "model"), f"w{i}", 40, errors)) for i in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert all(writer.exitcode == 0 for writer in writers)
    assert errors.empty(), errors.get()
    a, b = ((tmp_path / "model" / name).read_text() for name in ("a.txt", "b.txt"))
    assert a == b and a.endswith("-39")  # one writer's last save, whole
    assert not list(tmp_path.glob(".model.*")), "staging or retired folders left behind"


def test_a_filesystem_that_refuses_the_lock_still_saves(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def refuse(descriptor, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    save(tmp_path / "model", "whole")
    assert (tmp_path / "model" / "a.txt").read_text() == "whole"
    assert not list(tmp_path.glob(".model.*"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, umask):
    from peftlab.core.atomic import write_text_atomic

    previous = os.umask(umask)
    try:
        save(tmp_path / "model", "whole")
        write_text_atomic(tmp_path / "metrics.json", "{}")
        (tmp_path / "neighbour").mkdir()
        (tmp_path / "neighbour.txt").write_text("")
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    assert mode(tmp_path / "model") == mode(tmp_path / "neighbour") == 0o777 & ~umask
    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "neighbour.txt") == 0o666 & ~umask
    assert mode(tmp_path / "model" / "a.txt") == 0o666 & ~umask
