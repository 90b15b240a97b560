"""Bad MMLU and Alpaca rows are refused as they are read, naming the file and the line (MMLU) or the item
(Alpaca) and what is wrong, before any training starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.core.errors import UserError
from peftlab.tasks import TaskError, get_task

GOOD_MMLU_ROW = '"What is 2+2?",3,4,5,"6, or more",B'


def mmlu_file(root: Path, lines: list[str]) -> Path:
    path = root / "mmlu" / "test" / "arithmetic_test.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("row,expected", [
    ("What is 2+2?,3,4,5,6, or more,B", "line 2: 7 fields, expected 6 (question, four options, answer letter A-D"),
    ("What is 2+2?,3,4,5,B", "line 2: 5 fields, expected 6"),
    ("What is 2+2?,3,4,5,6,E", "line 2: the answer 'E' is not one of A, B, C, D"),
    ("What is 2+2?,3,4,5,6,b", "line 2: the answer 'b' is not one of A, B, C, D"),
])
def test_a_bad_mmlu_row(tmp_path, row, expected):
    path = mmlu_file(tmp_path, [GOOD_MMLU_ROW, row])
    with pytest.raises(TaskError) as caught:
        get_task("mmlu").load("test", tmp_path)
    assert f"{path} {expected}" in str(caught.value) and "fix or remove that line" in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_an_mmlu_line_number_counts_the_lines_inside_quotes(tmp_path):
    path = mmlu_file(tmp_path, ['"A question\nover two lines",1,2,3,4,A', "Q,1,2,3,4,Z"])
    with pytest.raises(TaskError, match=f"{path} line 3: the answer 'Z'"):
        get_task("mmlu").load("test", tmp_path)


def alpaca_file(root: Path, items: object) -> Path:
    path = root / "alpaca" / "alpaca_data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    return path


GOOD_ITEM = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


@pytest.mark.parametrize("item,expected", [
    ({"instruction": "Name a colour.", "input": ""}, "item 1 (counting from 0): no 'output' (it has 'instruction', 'input')"),
    ({"output": "Blue."}, "item 1 (counting from 0): no 'instruction'"),
    ({"instruction": "Name a colour.", "output": ["Blue."]}, """item 1 (counting from 0): 'output' is ["Blue."], not text"""),
    ({"instruction": "Name a colour.", "input": 3, "output": "Blue."}, "item 1 (counting from 0): 'input' is 3, not text"),
    ("Name a colour.", "item 1 (counting from 0): \"Name a colour.\" is not an object"),
])
def test_a_bad_alpaca_item(tmp_path, item, expected):
    path = alpaca_file(tmp_path, [GOOD_ITEM, item])
    with pytest.raises(TaskError) as caught:
        get_task("alpaca").load("train", tmp_path)
    assert f"{path} {expected}" in str(caught.value) and "fix or remove that item" in str(caught.value)


def test_alpaca_that_is_not_a_list(tmp_path):
    path = alpaca_file(tmp_path, {"data": [GOOD_ITEM]})
    with pytest.raises(TaskError, match=f"{path} must be a JSON list of objects .* \\(it holds a dict\\)"):
        get_task("alpaca").load("train", tmp_path)
