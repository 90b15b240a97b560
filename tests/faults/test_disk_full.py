"""A full disk (or quota) while writing: a clean error that says so, and the previous output intact."""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import peftlab
from conftest import tiny_llama
from peftlab.cli import main
from peftlab.core.atomic import OutOfSpaceError, atomic_directory, write_text_atomic
from peftlab.core.errors import UserError
from peftlab.train.resources import write_log_line

SAFETENSORS_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                    'device" })')


def test_a_full_disk_inside_an_atomic_folder_keeps_the_previous_one(tmp_path):
    with atomic_directory(tmp_path / "adapter") as staging:
        (staging / "a.txt").write_text("old")
    with pytest.raises(OutOfSpaceError, match=r"no space left .*adapter; nothing was replaced") as caught:
        with atomic_directory(tmp_path / "adapter") as staging:
            (staging / "a.txt").write_text("half")
            raise SafetensorError(SAFETENSORS_FULL)
    assert isinstance(caught.value, UserError)
    assert (tmp_path / "adapter" / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_full_disk_in_an_atomic_file_write_keeps_the_previous_file(tmp_path, monkeypatch):
    write_text_atomic(tmp_path / "metrics.json", "old")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutOfSpaceError, match="metrics.json; nothing was replaced"):
        write_text_atomic(tmp_path / "metrics.json", "new")
    assert (tmp_path / "metrics.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(ValueError, match="not about space"), atomic_directory(tmp_path / "x"):
        raise ValueError("not about space")


def test_a_folder_is_never_put_where_a_file_is(tmp_path):
    (tmp_path / "adapter").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"), atomic_directory(tmp_path / "adapter"):
        pass
    assert (tmp_path / "adapter").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["adapter"]


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow a tmpfs mount: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_export_onto_a_full_tmpfs_fails_cleanly_and_keeps_the_earlier_export(tmp_path, capsys):
    model = peftlab.apply(copy.deepcopy(tiny_llama().eval()), "lora", rank=4)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    peftlab.save_adapter(model, tmp_path / "adapter")
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        assert main(["export", str(tmp_path / "adapter"), str(disk / "peft")]) == 0
        before = {p.name: p.read_bytes() for p in (disk / "peft").iterdir()}
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        capsys.readouterr()
        code = main(["export", str(tmp_path / "adapter"), str(disk / "peft"), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and "no space left" in err and "Traceback" not in err, err
        assert {p.name: p.read_bytes() for p in (disk / "peft").iterdir()} == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "peft"], "a half-written staging folder was left"
        with pytest.raises(OutOfSpaceError, match="while writing .*log.jsonl. Free some space"):
            write_log_line(disk / "log.jsonl", {"step": 1, "loss": 0.5, "padding": "x" * 8192})
