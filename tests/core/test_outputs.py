"""The output policy (peftlab.core.outputs): refuse what would destroy a user's files, before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from peftlab.core import outputs
from peftlab.core.errors import UserError
from peftlab.core.outputs import OutputError, OutputKind, claim_output, remove_owned

ADAPTER = OutputKind(command="peftlab export", flag="DST", owns=("adapter_config.json", "adapter_model.safetensors"))
RESULT = OutputKind(command="peftlab eval", flag="--output", folder=False)


def test_a_new_or_empty_folder_is_claimed_resolved(tmp_path, monkeypatch):
    assert claim_output(tmp_path / "new" / "deeper", ADAPTER) == (tmp_path / "new" / "deeper").resolve()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert claim_output(".", ADAPTER) == (tmp_path / "empty").resolve()  # "." names the folder, not EBUSY later
    assert not list((tmp_path / "empty").iterdir()), "the write probe was left behind"
    assert not (tmp_path / "new").exists(), "claiming creates nothing"


def test_a_folder_with_files_needs_overwrite_and_then_only_the_commands_own(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    with pytest.raises(OutputError, match=r"DST .*out already holds 1 entry \(adapter_config.json\); pass --overwrite"):
        claim_output(out, ADAPTER)
    assert claim_output(out, ADAPTER, overwrite=True) == out.resolve()
    (out / "notes.txt").write_text("mine")
    (out / "train.py").write_text("mine")
    with pytest.raises(OutputError, match=r"does not write \(notes.txt, train.py\).*move those away") as caught:
        claim_output(out, ADAPTER, overwrite=True)
    assert isinstance(caught.value, UserError)
    assert claim_output(out, ADAPTER, resume=True) == out.resolve()  # continuing touches nothing else


def test_a_resumable_commands_message_offers_resume(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    run = OutputKind(command="peftlab train", flag="--output", resumable=True, owns=("log.jsonl",))
    with pytest.raises(OutputError, match="pass --resume to continue the run there, --overwrite"):
        claim_output(tmp_path, run)


def test_a_file_where_a_folder_goes_and_the_reverse(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        claim_output(tmp_path / "file", ADAPTER, overwrite=True)
    with pytest.raises(OutputError, match="is a file, so no folder can be made under it"):
        claim_output(tmp_path / "file" / "sub", ADAPTER)
    with pytest.raises(OutputError, match="is a folder; give the path of a file"):
        claim_output(tmp_path, RESULT, overwrite=True)
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        claim_output(tmp_path / "file", RESULT)
    assert claim_output(tmp_path / "file", RESULT, overwrite=True) == (tmp_path / "file").resolve()
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("output,relation", [("run", "is"), ("run/best/sub", "is inside"), (".", "holds")])
def test_an_output_is_never_an_input_inside_one_or_around_one(tmp_path, output, relation):
    (tmp_path / "run" / "best").mkdir(parents=True)
    with pytest.raises(OutputError, match=f"{relation} the input --adapter .*would destroy what is being read"):
        claim_output(tmp_path / output, ADAPTER, overwrite=True, inputs={"--adapter": tmp_path / "run" / "best"
                                                                         if relation == "holds" else tmp_path / "run"})


def test_the_filesystem_root_is_refused():
    with pytest.raises(OutputError, match="filesystem root"):
        claim_output("/", ADAPTER, overwrite=True)


def test_a_folder_that_refuses_new_files_is_named_before_any_work(tmp_path, monkeypatch):
    def refuse(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs, "_probe", refuse)
    with pytest.raises(OutputError, match=r"cannot write in .* \(Permission denied\); choose a folder you can write"):
        claim_output(tmp_path / "new", ADAPTER)


def test_without_unnamed_files_the_named_probe_is_removed_and_its_refusal_named(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    claim_output(tmp_path / "new", ADAPTER)
    assert list(tmp_path.iterdir()) == []

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write in .* \(Permission denied\)"):
        claim_output(tmp_path / "new", ADAPTER)


KILLED_IN_THE_PROBE = """
import os, signal, sys
from peftlab.core.outputs import OutputKind, claim_output
os.close = lambda descriptor: os.kill(os.getpid(), signal.SIGKILL)  # killed with the probe open
claim_output(sys.argv[1], OutputKind(command="peftlab train", flag="--output"))
"""


def supports_unnamed_files(folder) -> bool:
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return True
    except (AttributeError, OSError):
        return False


def test_a_kill_during_the_write_check_leaves_no_probe(tmp_path):
    if not supports_unnamed_files(tmp_path):
        pytest.skip("this filesystem has no O_TMPFILE: the named probe a kill can leave is owned by --overwrite")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-c", KILLED_IN_THE_PROBE, str(folder / "run")], timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert sorted(entry.name for entry in folder.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputError, match="cannot write in"):
            claim_output(locked / "out", ADAPTER)
    finally:
        locked.chmod(0o755)


def test_remove_owned_leaves_everything_else(tmp_path):
    for name in ("adapter_config.json", "adapter_model.safetensors", "notes.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / ".adapter.123.abc.tmp").mkdir()  # an interrupted write's staging
    assert sorted(remove_owned(tmp_path, ADAPTER)) == [".adapter.123.abc.tmp", "adapter_config.json",
                                                       "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
