"""The file tasks (classify, chat, seq2seq) trained end to end through ``peftlab train`` on tiny seeded models,
from CSV, JSONL, Parquet and ``save_to_disk`` files written here, then scored again by ``peftlab eval``."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from peftlab.cli import main

SMALL = ["--batch-size", "4", "--no-progress", "--seed", "3", "--max-steps", "3", "--lr", "1e-2"]
WORDS = {"pos": ("good", "fine", "great"), "neg": ("bad", "dull", "awful")}
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def reviews(count: int, offset: int = 0) -> list[dict]:
    return [{"review": f"a {WORDS[label][i % 3]} film {i}", "sentiment": label, "score": float(i % 5) / 4,
             "other": f"seen {i % 3} times", "stars": i % 3}
            for i in range(offset, offset + count) for label in [("pos", "neg")[i % 2]]]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train(capsys, model, task, output, *extra):
    code = main(["train", "--model", str(model), "--task", task, "--output", str(output), *SMALL, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((output / "metrics.json").read_text())


def evaluate(capsys, model, adapter, task, *extra):
    code = main(["eval", "--model", str(model), "--adapter", str(adapter), "--task", task, "--seed", "3", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_string_labels_from_csv_map_to_sorted_classes_and_eval_reproduces(tiny_models, tmp_path, capsys):
    train_file = write_csv(tmp_path / "train.csv", reviews(16))
    eval_file = write_csv(tmp_path / "dev.csv", reviews(6, offset=16))
    out = tmp_path / "run"
    metrics = train(capsys, tiny_models["bert"], "classify", out, "--train", str(train_file), "--eval", str(eval_file),
                    "--text-column", "review", "--label-column", "sentiment")
    assert set(metrics["scores"]) == {"accuracy", "macro_f1"} and metrics["train_examples"] == 16
    saved = json.loads((out / "task.json").read_text())
    assert saved["labels"] == ["neg", "pos"] and saved["data"]["text_column"] == "review"
    assert (out / "best" / "task.json").is_file()
    # the settings come from the adapter's task.json; an eval file with one class still maps pos to 1
    record = evaluate(capsys, tiny_models["bert"], out, "classify")
    assert record["scores"] == pytest.approx(metrics["scores"])
    only_pos = write_csv(tmp_path / "pos.csv", [r for r in reviews(6, offset=16) if r["sentiment"] == "pos"])
    record = evaluate(capsys, tiny_models["bert"], out, "classify", "--eval", str(only_pos))
    assert record["examples"] == {"eval": 3}


def test_float_labels_from_jsonl_train_a_regression(tiny_models, tmp_path, capsys):
    train_file = write_jsonl(tmp_path / "train.jsonl", reviews(20))
    metrics = train(capsys, tiny_models["bert"], "classify", tmp_path / "run", "--train", str(train_file),
                    "--text-column", "review", "--label-column", "score")
    assert set(metrics["scores"]) == {"pearson", "spearman"}
    assert metrics["train_examples"] == 18  # a tenth held out (2 of 20) and scored
    assert json.loads((tmp_path / "run" / "task.json").read_text())["kind"] == "regression"


def test_sentence_pairs_with_integer_labels_from_parquet(tiny_models, tmp_path, capsys):
    import datasets

    train_file = tmp_path / "train.parquet"
    datasets.Dataset.from_list(reviews(20)).to_parquet(str(train_file))
    out = tmp_path / "run"
    metrics = train(capsys, tiny_models["bert"], "classify", out, "--train", str(train_file), "--text-column",
                    "review", "--text-pair-column", "other", "--label-column", "stars", "--method", "bitfit")
    saved = json.loads((out / "task.json").read_text())
    assert saved["labels"] == ["0", "1", "2"] and saved["ids"] is True
    assert "accuracy" in metrics["scores"] and metrics["train_examples"] == 18
    record = evaluate(capsys, tiny_models["bert"], out, "classify")  # the same held-out rows, from task.json
    assert record["scores"] == pytest.approx(metrics["scores"])


def chat_model(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "chat-llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def conversations(count: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"},
                          {"role": "user", "content": "again"}, {"role": "assistant", "content": f"{i} {i}"}]}
            for i in range(count)]


def test_chat_messages_train_on_the_assistant_turns_only(tiny_models, tmp_path, capsys):
    from transformers import AutoTokenizer

    from peftlab.tasks import Example
    from peftlab.train.encoding import IGNORE, _encode_chat

    model = chat_model(tiny_models, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model)
    example = Example(text="", messages=(("user", "hi"), ("assistant", "yo"), ("user", "bye"), ("assistant", "ok")))
    features = _encode_chat(example, tokenizer, 128)
    assert tokenizer.decode(features["input_ids"]) == "user: hi\nassistant: yo\nuser: bye\nassistant: ok\n"
    trained = [i for i, label in zip(features["input_ids"], features["labels"], strict=True) if label != IGNORE]
    assert tokenizer.decode(trained) == "yo\nok\n"  # each answer and its end of turn; nothing else
    assert all(label in (IGNORE, token) for token, label in zip(features["input_ids"], features["labels"], strict=True))

    train_file = write_jsonl(tmp_path / "chats.jsonl", conversations(12))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", conversations(4))
    out = tmp_path / "run"
    metrics = train(capsys, model, "chat", out, "--train", str(train_file), "--eval", str(eval_file))
    scores = metrics["scores"]
    assert scores["loss"] > 0 and scores["perplexity"] == pytest.approx(2.718281828 ** scores["loss"])
    assert evaluate(capsys, model, out, "chat")["scores"] == pytest.approx(scores, rel=1e-5)


def test_alpaca_rows_from_a_saved_dataset_need_no_chat_template(tiny_models, tmp_path, capsys):
    import datasets

    rows = [{"instruction": f"count to {i}", "input": "" if i % 2 else "slowly", "output": " ".join(map(str, range(i)))}
            for i in range(1, 13)]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    metrics = train(capsys, tiny_models["llama"], "chat", tmp_path / "run", "--train", str(folder))
    assert metrics["scores"]["loss"] > 0 and metrics["train_examples"] == 11


def test_seq2seq_on_t5_is_scored_by_bleu_and_chrf(tiny_models, tmp_path, capsys):
    rows = [{"en": f"the {w} cat", "fr": f"le chat {w}"} for w in ("big", "small", "red", "old", "new", "fat")] * 2
    train_file = write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "run"
    metrics = train(capsys, tiny_models["t5"], "seq2seq", out, "--train", str(train_file), "--source-column", "en",
                    "--target-column", "fr", "--method", "ia3", "--max-new-tokens", "8")
    assert set(metrics["scores"]) == {"bleu", "chrf"} and metrics["scores"]["chrf"] >= 0
    record = evaluate(capsys, tiny_models["t5"], out, "seq2seq", "--max-new-tokens", "8")
    assert record["scores"] == pytest.approx(metrics["scores"])


def test_messages_without_a_chat_template_are_refused_before_anything_is_written(tiny_models, tmp_path, capsys):
    train_file = write_jsonl(tmp_path / "chats.jsonl", conversations(4))
    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_models["llama"]), "--task", "chat", "--train", str(train_file),
                 "--output", str(out), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "tokenizer has none" in err and "instruction/input/output" in err
    assert not out.exists()


@pytest.mark.slow
def test_a_jsonl_chat_task_and_a_parquet_seq2seq_task_in_suites(tiny_models, tmp_path, capsys):
    import datasets
    import yaml

    from peftlab.bench.records import read_records

    write_jsonl(tmp_path / "chats.jsonl", conversations(12))
    pairs = [{"en": f"the {w} cat", "fr": f"le chat {w}"} for w in ("big", "small", "red", "old", "new", "fat")] * 2
    datasets.Dataset.from_list(pairs).to_parquet(str(tmp_path / "pairs.parquet"))
    loop = {"max_steps": 2, "batch_size": 4, "learning_rate": 1.0e-2, "progress": False}
    suites = {
        "chat": ({"model": str(chat_model(tiny_models, tmp_path)), "name": "chat-llama"},
                 {"task": "chat", "name": "talk", "data": {"train": "chats.jsonl"}}, {"loss", "perplexity"}),
        "pairs": ({"model": str(tiny_models["t5"]), "name": "tiny-t5"},
                  {"task": "seq2seq", "name": "catfr", "data": {"train": "pairs.parquet", "source_column": "en",
                                                               "target_column": "fr"}}, {"bleu", "chrf"}),
    }
    for name, (model, task, metrics) in suites.items():
        suite = tmp_path / f"{name}.yaml"
        suite.write_text(yaml.safe_dump({"name": name, "seeds": [0], "models": [model], "tasks": [task],
                                         "methods": ["lora"], "training": {**loop, "max_new_tokens": 8}}))
        code = main(["bench", "--suite", str(suite), "--output", str(tmp_path / f"out-{name}"), "--no-report",
                     "--no-memory-breakdown"])
        assert code == 0, capsys.readouterr().err
        (record,) = read_records(tmp_path / f"out-{name}")
        assert record["status"] == "ok", record["error"]
        assert set(record["scores"]) == metrics and f"--train {tmp_path}" in record["reproduce"]
