"""The forgetting metric: language-modelling loss on the first 500 lines of newstest2016's English side."""

import math

import pytest
from tasks.data_root_helper import real_data_root

from peftlab.tasks import get_task
from peftlab.tasks.english_lm import LINES


def test_the_first_500_english_lines_each_one_sequence():
    task = get_task("english-lm")
    examples = task.load("newstest2016", real_data_root())
    assert len(examples) == LINES == 500
    assert examples[0].target == "UN Chief Says There Is No Military Solution in Syria" and examples[0].text == ""
    assert task.kind == "language_modeling" and task.main_metric == "loss"
    assert not task.greater_is_better and task.scored_before_training


def test_loss_is_the_mean_per_token_and_perplexity_its_exponential():
    scores = get_task("english-lm").metrics([(6.0, 3), (2.0, 1)], [None, None])
    assert scores["loss"] == pytest.approx(2.0) and scores["perplexity"] == pytest.approx(math.exp(2.0))


def test_a_file_without_text_is_a_clean_error(tmp_path):
    from peftlab.tasks import TaskError

    (tmp_path / "wmt16_en_ro").mkdir()
    (tmp_path / "wmt16_en_ro" / "newstest2016.en").write_text("\n\n")
    with pytest.raises(TaskError, match="holds no text lines"):
        get_task("english-lm").load("newstest2016", tmp_path)
