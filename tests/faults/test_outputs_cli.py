"""Every command that writes follows one output policy: an existing folder or file is refused unless
--overwrite, --overwrite replaces only the command's own files, an output is never its input, and a bad
output path fails with exit 2 before any work. Each test is a user's file that was lost before."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import peftlab
from conftest import tiny_llama
from peftlab.cli import main
from peftlab.core import outputs
from peftlab.interop import export_peft


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A base model folder, a trained peftlab adapter and its peft export."""
    root = tmp_path_factory.mktemp("outputs")
    base = tiny_llama().eval()
    base.save_pretrained(root / "base")
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    peftlab.save_adapter(model, root / "adapter")
    export_peft(root / "adapter", root / "peft")
    return {"base": root / "base", "adapter": root / "adapter", "peft": root / "peft"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"peftlab {argv[0]}: error: ") and ": error: peftlab" not in err, err
    return err


def users_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my notes")
    (path / "train.py").write_text("print('mine')")
    return snapshot(path)


def commands(workspace, output: Path) -> dict[str, list[str]]:
    return {"merge": ["merge", "--model", str(workspace["base"]), "--adapter", str(workspace["adapter"]),
                      "--output", str(output)],
            "export": ["export", str(workspace["adapter"]), str(output)],
            "import": ["import", str(workspace["peft"]), str(output)]}


@pytest.mark.parametrize("command", ["merge", "export", "import"])
def test_a_folder_of_the_users_files_is_kept_even_with_overwrite(workspace, tmp_path, capsys, command):
    out = tmp_path / "mine"
    before = users_folder(out)
    argv = commands(workspace, out)[command]
    refused(capsys, argv, "already holds 2 entries (notes.txt, train.py); pass --overwrite")
    refused(capsys, [*argv, "--overwrite"], "does not write (notes.txt, train.py)")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("command", ["merge", "export", "import"])
def test_an_existing_file_is_refused_and_left_in_place(workspace, tmp_path, capsys, command):
    out = tmp_path / "model.bin"
    out.write_bytes(b"precious")
    refused(capsys, [*commands(workspace, out)[command], "--overwrite"], "is a file, not a folder")
    assert out.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["model.bin"]


@pytest.mark.parametrize("command", ["merge", "export", "import"])
def test_overwrite_replaces_the_commands_own_earlier_output(workspace, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = commands(workspace, out)[command]
    assert main(argv) == 0
    first = snapshot(out)
    refused(capsys, argv, "pass --overwrite")
    assert snapshot(out) == first
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert snapshot(out).keys() == first.keys()  # the same files, written anew
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a retired copy was left behind"


def test_merge_into_the_adapters_own_run_folder_is_refused(workspace, tmp_path, capsys):
    run = tmp_path / "runs" / "x"
    export_peft(workspace["adapter"], run)  # a run folder that holds an adapter
    (run / "checkpoint-4").mkdir()
    (run / "log.jsonl").write_text('{"step": 4}\n')
    before = snapshot(run)
    for output in (run, run / "merged", run.parent):
        refused(capsys, ["merge", "--model", str(workspace["base"]), "--adapter", str(run), "--output", str(output),
                         "--overwrite"], "the input --adapter")
    assert snapshot(run) == before


def test_export_into_the_working_folder_is_a_clean_error(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    refused(capsys, ["export", str(workspace["adapter"]), ".", "--overwrite"], "does not write (notes.txt)")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_eval_output_file_is_refused_before_scoring(workspace, tmp_path, capsys):
    out = tmp_path / "scores.json"
    out.write_text("{}")
    refused(capsys, ["eval", "--model", str(workspace["base"]), "--task", "sst2", "--output", str(out)],
            "already exists; pass --overwrite")
    refused(capsys, ["eval", "--model", str(workspace["base"]), "--task", "sst2", "--output", str(tmp_path)],
            "is a folder; give the path of a file")
    assert out.read_text() == "{}"


def test_train_output_that_is_a_file_fails_before_loading(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("mine")
    refused(capsys, ["train", "--model", str(tmp_path / "nowhere"), "--task", "sst2", "--output", str(out)],
            "is a file, not a folder")
    assert out.read_text() == "mine"


def test_train_output_in_a_folder_that_refuses_files_fails_before_loading(tmp_path, capsys, monkeypatch):
    def refuse(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs, "_probe", refuse)
    refused(capsys, ["train", "--model", str(tmp_path / "nowhere"), "--task", "sst2", "--output",
                     str(tmp_path / "run")], "cannot write in")


def test_bench_refuses_a_folder_that_is_no_sweep_and_a_file(tmp_path, capsys):
    before = users_folder(tmp_path / "mine")
    refused(capsys, ["bench", "--suite", "quick", "--output", str(tmp_path / "mine")],
            "already holds 2 entries (notes.txt, train.py); pass --overwrite")
    refused(capsys, ["bench", "--suite", "quick", "--output", str(tmp_path / "mine"), "--overwrite"],
            "does not write (notes.txt, train.py)")
    assert snapshot(tmp_path / "mine") == before
    (tmp_path / "file").write_text("x")
    refused(capsys, ["bench", "--suite", "quick", "--output", str(tmp_path / "file")], "is a file, not a folder")


def test_report_refuses_to_replace_a_report_without_overwrite(tmp_path, capsys, monkeypatch):
    import peftlab.bench.report as report

    monkeypatch.setattr(report, "build_report", lambda output: report.Report([], [{"id": 1}]))
    monkeypatch.setattr(report, "markdown", lambda r: "# new\n")
    for name, writer in (("csv_text", "a,b\n"), ("latex", "tex\n"), ("html_page", "<p>new</p>\n")):
        monkeypatch.setattr(report, name, lambda r, text=writer: text)
    (tmp_path / "runs").mkdir()
    (tmp_path / "report.md").write_text("# mine, edited by hand\n")
    refused(capsys, ["report", str(tmp_path)], "already holds a report (report.md")
    assert (tmp_path / "report.md").read_text() == "# mine, edited by hand\n"
    assert main(["report", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "report.md").read_text() == "# new\n"
