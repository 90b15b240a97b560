"""Bad GLUE rows are refused as they are read, naming the file and the line, before any training starts:
labels that are not a class of the task (``positive`` in SST-2, ``5`` in a binary task), scores that are not
numbers, and rows with a field too many or too few."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.core.errors import UserError
from peftlab.tasks import TaskError, get_task


def glue_file(root: Path, folder: str, lines: list[str], split: str = "train") -> Path:
    path = root / "glue" / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("label,expected", [
    ("positive", "label 'positive' is not a class of sst2 (the numbers 0 to 1)"),
    ("5", "label '5' is not a class of sst2 (the numbers 0 to 1)"),
    ("-1", "label '-1' is not a class of sst2"),
    ("", "label '' is not a class of sst2"),
])
def test_sst2_labels_outside_the_task(tmp_path, label, expected):
    path = glue_file(tmp_path, "SST-2", ["sentence\tlabel", "a fine film\t1", f"a dull film\t{label}"])
    with pytest.raises(TaskError, match=f"{path} line 3: ") as caught:
        get_task("sst2").load("train", tmp_path)
    assert expected in str(caught.value) and "fix or remove that line" in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_a_row_with_an_extra_column_is_refused(tmp_path):
    path = glue_file(tmp_path, "SST-2", ["sentence\tlabel", "a fine film\t1", "a dull\tfilm\t0"])
    with pytest.raises(TaskError, match=f"{path} line 3: 3 fields, expected 2"):
        get_task("sst2").load("train", tmp_path)


def test_a_row_cut_short_is_refused(tmp_path):
    path = glue_file(tmp_path, "RTE", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tb"])
    with pytest.raises(TaskError, match=f"{path} line 3: 3 fields, expected 4"):
        get_task("rte").load("train", tmp_path)


def test_a_headerless_cola_row_with_an_extra_column(tmp_path):
    path = glue_file(tmp_path, "CoLA", ["gj04\t1\t\tFine.", "gj04\t0\t*\tBad.\textra"])
    with pytest.raises(TaskError, match=f"{path} line 2: 5 fields, expected 4"):
        get_task("cola").load("train", tmp_path)


@pytest.mark.parametrize("score", ["high", "nan", "inf"])
def test_a_regression_score_that_is_not_a_finite_number(tmp_path, score):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    path = glue_file(tmp_path, "STS-B", [header, f"0\tg\tf\t2012\t1\ts\ts\ta\tb\t{score}"])
    with pytest.raises(TaskError, match=f"{path} line 2: label '{score}' is not a finite number"):
        get_task("stsb").load("train", tmp_path)


def test_train_on_a_bad_label_fails_before_writing_anything(tmp_path, capsys):
    from peftlab.cli import main

    glue_file(tmp_path, "SST-2", ["sentence\tlabel", "a fine film\t1", "a dull film\t5"])
    glue_file(tmp_path, "SST-2", ["sentence\tlabel", "a fine film\t1"], split="dev")
    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "nowhere"), "--task", "sst2", "--data-dir", str(tmp_path),
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "train.tsv line 3: label '5' is not a class of sst2" in err and "Traceback" not in err
    assert not out.exists()
