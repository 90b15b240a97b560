"""Every task's loader on the real files (row counts and label sets from SOURCES.md), the standard
GLUE layout for the tasks not placed here (fixtures), and the errors for missing or unknown data."""

import sys
import types
from collections import Counter

import pytest
from tasks.data_root_helper import real_data_root

from peftlab.tasks import Example, TaskError, get_task, subsample, task_names


@pytest.fixture(scope="module")
def root():
    return real_data_root()


GLUE_COUNTS = {  # task: (train rows, dev rows, train label counts, dev label counts)
    "cola": (8551, 1043, {1: 6023, 0: 2528}, {1: 721, 0: 322}),
    "sst2": (67349, 872, {1: 37569, 0: 29780}, {1: 444, 0: 428}),
    "mrpc": (3668, 408, {1: 2474, 0: 1194}, {1: 279, 0: 129}),
    "rte": (2490, 277, {0: 1249, 1: 1241}, {0: 146, 1: 131}),
}


@pytest.mark.parametrize("name", sorted(GLUE_COUNTS))
def test_glue_classification_files(root, name):
    task = get_task(name)
    train, dev = task.load("train", root), task.load("dev", root)
    rows_train, rows_dev, labels_train, labels_dev = GLUE_COUNTS[name]
    assert (len(train), len(dev)) == (rows_train, rows_dev)
    assert Counter(e.label for e in train) == labels_train
    assert Counter(e.label for e in dev) == labels_dev
    assert all(e.text for e in train) and all((e.text_pair is not None) == (name in ("mrpc", "rte")) for e in train)


def test_glue_first_rows_read_with_quotes_intact(root):
    mrpc = get_task("mrpc").load("train", root)[0]
    assert mrpc.text.startswith('Amrozi accused his brother, whom he called "the witness"') and mrpc.label == 1
    assert get_task("rte").load("train", root)[0].label == 1  # not_entailment
    assert get_task("cola").load("train", root)[0].text == "Our friends won't buy this analysis, let alone the next one we propose."


def test_stsb_scores(root):
    task = get_task("stsb")
    train, dev = task.load("train", root), task.load("dev", root)
    assert (len(train), len(dev)) == (5749, 1500)
    assert min(e.label for e in train) == 0.0 and max(e.label for e in train) == 5.0
    assert (train[0].text, train[0].text_pair, train[0].label) == ("A plane is taking off.", "An air plane is taking off.", 5.0)


def test_mmlu_files(root):
    zero, five = get_task("mmlu"), get_task("mmlu-5shot")
    counts = {split: len(zero.load(split, root)) for split in ("dev", "val", "test")}
    assert counts == {"dev": 285, "val": 1531, "test": 14042}
    test = five.load("test", root)
    assert len({e.group for e in test}) == 57 and {e.label for e in test} == {0, 1, 2, 3}
    first = test[0]
    assert first.text.count("\nAnswer: ") == 5 and first.text.endswith("\nAnswer:")
    assert first.text.startswith("The following are multiple choice questions (with answers) about abstract algebra.")
    assert first.target == "ABCD"[first.label]
    assert zero.load("test", root)[0].text.count("Answer:") == 1


def test_wmt16_files(root):
    task = get_task("wmt16-en-ro")
    dev, test = task.load("newsdev2016", root), task.load("newstest2016", root)
    assert len(dev) == len(test) == 1999
    assert test[0].text == "translate English to Romanian: UN Chief Says There Is No Military Solution in Syria"
    assert test[0].target == "Șeful ONU declară că nu există soluții militare în Siria"
    with pytest.raises(TaskError, match="train.en not found"):
        task.load("train", root)  # no training split here: --train-split newsdev2016


def test_alpaca_file(root):
    task = get_task("alpaca")
    train, held_out = task.load("train", root), task.load("eval", root)
    assert (len(train), len(held_out)) == (52002 - 1041, 1041)
    assert held_out[0].text.endswith("### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n")
    with_input = [e for e in train if "### Input:\n" in e.text]
    assert with_input and with_input[0].text.startswith("Below is an instruction that describes a task, paired with an input")


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")


def test_mnli_qnli_qqp_read_the_standard_glue_layout(tmp_path):
    mnli = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    write_tsv(tmp_path / "glue/MNLI/dev_matched.tsv", mnli, [["0", "1", "1e", "fiction", 'He said "hi".', "He spoke.", "entailment", "entailment"],
                                                             ["1", "2", "2c", "fiction", "A", "B", "neutral", "contradiction"]])
    examples = get_task("mnli").load("dev_matched", tmp_path)
    assert [(e.text, e.text_pair, e.label) for e in examples] == [('He said "hi".', "He spoke.", 0), ("A", "B", 2)]
    write_tsv(tmp_path / "QNLI/train.tsv", ["index", "question", "sentence", "label"], [["0", "Why?", "Because.", "not_entailment"]])
    assert get_task("qnli").load("train", tmp_path) == [Example("Why?", "Because.", 1)]
    write_tsv(tmp_path / "glue/QQP/dev.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
              [["0", "1", "2", "How?", "How so?", "1"]])
    assert get_task("qqp").load("dev", tmp_path) == [Example("How?", "How so?", 1)]
    write_tsv(tmp_path / "glue/QQP/train.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [["0", "1"]])
    with pytest.raises(TaskError, match="line 2: 2 fields"):
        get_task("qqp").load("train", tmp_path)


def test_missing_files_name_the_file_and_both_options(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(TaskError) as error:
        get_task("sst2").load("train", tmp_path)
    message = str(error.value)
    assert "SST-2/train.tsv not found" in message and "--data-dir" in message and "PEFTLAB_DATA" in message
    assert "pip install datasets" in message


def test_no_data_folder_and_no_datasets_package_names_both_options(monkeypatch):
    monkeypatch.delenv("PEFTLAB_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(TaskError, match=r"--data-dir .*pip install datasets"):
        get_task("rte").load("train")


def fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_missing_local_files_are_read_from_the_hub(tmp_path, monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "Why?", "sentence": "Because.", "label": 1, "idx": 0}]

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    monkeypatch.setenv("PEFTLAB_DATA", str(tmp_path))  # a data folder without QNLI, as ../shared/data
    assert get_task("qnli").load("train") == [Example("Why?", "Because.", 1)]
    assert get_task("qnli").load("dev", tmp_path) == [Example("Why?", "Because.", 1)]
    assert calls == [("nyu-mll/glue", "qnli", "train"), ("nyu-mll/glue", "qnli", "validation")]


def test_an_unreachable_hub_names_both_routes(tmp_path, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    with pytest.raises(TaskError) as error:
        get_task("mnli").load("dev_matched", tmp_path)
    message = str(error.value)
    assert "MNLI/dev_matched.tsv not found under the data folder" in message
    assert "--data-dir" in message and "PEFTLAB_DATA" in message
    assert "hub could not be read (Couldn't reach 'nyu-mll/glue'" in message
    monkeypatch.delenv("PEFTLAB_DATA", raising=False)
    with pytest.raises(TaskError, match="no data folder given, and the HuggingFace hub could not be read"):
        get_task("mnli").load("dev_matched")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError, match="unknown task 'glue-sst2'; known tasks: alpaca, chat, classify, cola"):
        get_task("glue-sst2")
    assert {"cola", "sst2", "mrpc", "stsb", "rte", "qnli", "mnli", "qqp", "wmt16-en-ro", "mmlu", "mmlu-5shot",
            "mmlu-subset", "mmlu-subset-5shot", "english-lm",
            "alpaca", "classify", "chat", "seq2seq"} == set(task_names())


def test_subsample_is_seeded_and_keeps_file_order():
    examples = [Example(str(i)) for i in range(100)]
    chosen = subsample(examples, 10, seed=3)
    assert chosen == subsample(examples, 10, seed=3) and chosen != subsample(examples, 10, seed=4)
    assert [int(e.text) for e in chosen] == sorted(int(e.text) for e in chosen)
    assert subsample(examples, None) is examples and subsample(examples, 500) is examples


def test_missing_data_is_told_without_reading_and_only_when_no_route_is_left(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    sst2 = get_task("sst2")
    problem = sst2.missing_data(["train", "dev"], tmp_path)
    assert "SST-2/train.tsv not found" in problem and "pip install datasets" in problem
    write_tsv(tmp_path / "glue/SST-2/train.tsv", ["sentence", "label"], [["good", "1"]])
    assert "SST-2/dev.tsv not found" in sst2.missing_data(["train", "dev"], tmp_path)
    write_tsv(tmp_path / "glue/SST-2/dev.tsv", ["sentence", "label"], [["bad", "0"]])
    assert sst2.missing_data(["train", "dev"], tmp_path) is None
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(lambda *a, **k: None))
    assert sst2.missing_data(["train"], tmp_path / "elsewhere") is None  # the hub is a route: a load will tell
