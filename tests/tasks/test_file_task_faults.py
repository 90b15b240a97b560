"""Bad user data for the file tasks (classify, chat, seq2seq) is refused as it is read, before any model
loads: each error names the file, the row (a CSV's or JSONL's line) and the fix; through the CLI, exit
status 2 and nothing written."""

from __future__ import annotations

import json

import pytest

from peftlab.cli import main
from peftlab.core.errors import UserError
from peftlab.tasks import TaskError
from peftlab.tasks.files import task_for


def csv_file(tmp_path, lines, name="data.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def jsonl_file(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def refused(task, match, **settings):
    with pytest.raises(TaskError, match=match) as caught:
        task_for(task, settings)
    assert isinstance(caught.value, UserError)
    return str(caught.value)


def test_a_missing_file(tmp_path):
    refused("classify", f"--train {tmp_path / 'nope.csv'}: no such file", train_file=str(tmp_path / "nope.csv"))


def test_an_unknown_column_lists_the_files_columns(tmp_path):
    path = csv_file(tmp_path, ["review,label", "fine,pos", "dull,neg"])
    message = refused("classify", f"{path} has no column 'text'", train_file=str(path))
    assert "--text-column's default" in message and "its columns: review, label" in message
    refused("classify", r"no column 'stars' \(from --label-column\)", train_file=str(path), text_column="review",
            label_column="stars")


def test_an_empty_label_names_its_line(tmp_path):
    path = csv_file(tmp_path, ["text,label", "fine,pos", "dull,", "ok,pos"])
    message = refused("classify", f"{path} line 3: the label \\(column 'label'\\) is empty", train_file=str(path))
    assert "fill it in or remove that row" in message


def test_an_empty_text_and_an_empty_integer_label(tmp_path):
    path = csv_file(tmp_path, ["text,label", "fine,1", ",0"])
    refused("classify", f"{path} line 3: column 'text' is empty", train_file=str(path))
    path = jsonl_file(tmp_path, [{"text": "a", "label": 1}, {"text": "b", "label": None}])
    refused("classify", f"{path} line 2: the label", train_file=str(path))


def test_a_row_with_too_many_fields(tmp_path):
    path = csv_file(tmp_path, ["text,label", "fine,pos", "dull,neg,extra"])
    refused("classify", f"{path} cannot be read as CSV .*fix the file", train_file=str(path))


def test_negative_class_ids_and_a_single_class(tmp_path):
    path = jsonl_file(tmp_path, [{"text": "a", "label": 1}, {"text": "b", "label": -1}])
    refused("classify", f"{path} line 2: label -1 is negative", train_file=str(path))
    path = csv_file(tmp_path, ["text,label", "a,pos", "b,pos"], "one.csv")
    refused("classify", "every label is 'pos'", train_file=str(path))


def test_an_eval_label_outside_the_saved_classes(tmp_path):
    path = csv_file(tmp_path, ["text,label", "a,pos", "b,meh"])
    saved = {"task": "classify", "kind": "classification", "labels": ["neg", "pos"], "ids": False, "data": {}}
    with pytest.raises(TaskError, match=f"{path} line 3: label 'meh' is not one of the classes .*neg, pos"):
        task_for("classify", {"eval_file": str(path)}, saved)


def test_bad_chat_rows(tmp_path):
    path = jsonl_file(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                                 {"messages": [{"role": "user", "content": "hi"}]}])
    refused("chat", f"{path} line 2: no 'assistant' message", train_file=str(path))
    path = jsonl_file(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}],
                      "none.jsonl")
    refused("chat", f"{path} line 1: message 2 \\(assistant\\) has no text 'content'", train_file=str(path))
    path = jsonl_file(tmp_path, [{"prompt": "hi", "answer": "yo"}], "columns.jsonl")
    refused("chat", "needs a 'messages' column .* its columns: prompt, answer", train_file=str(path))
    path = jsonl_file(tmp_path, [{"instruction": "say hi", "output": ""}, {"instruction": "a", "output": "b"}], "alpaca.jsonl")
    refused("chat", f"{path} line 1: column 'output' is empty", train_file=str(path))


def test_settings_that_do_not_fit_the_task(tmp_path):
    path = csv_file(tmp_path, ["source,target", "a,b", "c,d"])
    refused("seq2seq", "--task seq2seq takes no --label-column", train_file=str(path), label_column="x")
    refused("sst2", "--train: only for the tasks on your own files \\(chat, classify, seq2seq\\)", train_file=str(path))
    refused("classify", "--task classify reads your own data: give --train FILE")


def test_unknown_file_types_folders_and_offline_hub_names(tmp_path, monkeypatch):
    import datasets

    (tmp_path / "data.txt").write_text("a\n")
    refused("classify", "unknown file type '.txt'", train_file=str(tmp_path / "data.txt"))
    refused("classify", "not one written by `datasets` save_to_disk", train_file=str(tmp_path))
    datasets.Dataset.from_list([{"text": "a", "label": 1}] * 2).train_test_split(0.5, seed=0).save_to_disk(str(tmp_path / "dict"))
    refused("classify", "holds the splits train, test; give one of them", train_file=str(tmp_path / "dict"))
    asked = []

    def offline(name, split):  # what load_dataset does without network, at once
        asked.append((name, split))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    refused("classify", "the HuggingFace hub could not read it .*Couldn't reach", train_file="nobody/no-such-data:dev")
    assert asked == [("nobody/no-such-data", "dev")]


def test_through_the_cli_exit_2_and_nothing_written(tmp_path, capsys):
    path = csv_file(tmp_path, ["text,label", "fine,pos", "dull,"])
    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "no-model"), "--task", "classify", "--train", str(path),
                 "--output", str(out)])
    assert code == 2 and f"{path} line 3: the label (column 'label') is empty" in capsys.readouterr().err
    assert not out.exists()


def test_tsv_json_and_jsonl_read_alike(tmp_path):
    rows = [{"text": "a \"quoted\" film", "label": "pos"}, {"text": "b, dull", "label": "neg"}, {"text": "c", "label": "pos"}]
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    jsonl_file(tmp_path, rows, "d.jsonl")
    for name in ("d.tsv", "d.json", "d.jsonl"):
        task = task_for("classify", {"train_file": str(tmp_path / name), "eval_file": str(tmp_path / "d.jsonl")})
        assert [(e.text, e.label) for e in task.load("eval")] == [(r["text"], int(r["label"] == "pos")) for r in rows]
        assert task.labels == ("neg", "pos") and task.num_labels == 2


def test_without_datasets_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    path = csv_file(tmp_path, ["text,label", "a,pos", "b,neg"])
    refused("classify", "needs `datasets`: pip install 'peftlab\\[train\\]'", train_file=str(path))
