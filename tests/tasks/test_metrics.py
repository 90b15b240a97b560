"""Each official metric against values worked out by hand on small fixtures."""

import math

import pytest

from peftlab.tasks import Example, get_task
from peftlab.tasks import metrics

PREDICTIONS = [1, 0, 1, 1]
LABELS = [1, 0, 0, 1]  # TP 2, TN 1, FP 1, FN 0


def test_accuracy_f1_matthews_by_hand():
    assert metrics.accuracy(PREDICTIONS, LABELS) == 0.75
    # precision 2/3, recall 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert metrics.binary_f1(PREDICTIONS, LABELS) == pytest.approx(0.8)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(3*2*2*1)
    assert metrics.matthews(PREDICTIONS, LABELS) == pytest.approx(2 / math.sqrt(12))


def test_pearson_and_spearman_by_hand():
    # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): r = 5 / (sqrt(2) * sqrt(114) / 3)
    scores = metrics.pearson_spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert scores["pearson"] == pytest.approx(15 / math.sqrt(228))
    assert scores["spearman"] == pytest.approx(1.0)
    # rank differences (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * 15)
    assert metrics.pearson_spearman([1, 2, 3, 4], [1, 3, 2, 4])["spearman"] == pytest.approx(0.8)


def test_sacrebleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): BLEU = (1/12) ** (1/4)
    bleu = metrics.sacrebleu_score(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert bleu == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-4)
    assert metrics.sacrebleu_score(["Șeful ONU declară."], ["Șeful ONU declară."]) == pytest.approx(100.0)


def test_glue_tasks_report_their_official_scores():
    examples = [Example("x", label=label) for label in LABELS]
    assert get_task("cola").metrics(PREDICTIONS, examples) == pytest.approx(
        {"accuracy": 0.75, "matthews_correlation": 2 / math.sqrt(12)})
    assert get_task("mrpc").metrics(PREDICTIONS, examples) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert get_task("qqp").metrics(PREDICTIONS, examples) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert get_task("sst2").metrics(PREDICTIONS, examples) == {"accuracy": 0.75}
    stsb = get_task("stsb").metrics([1.0, 2.0, 3.0], [Example("x", label=s) for s in (2.0, 4.0, 7.0)])
    assert stsb == pytest.approx({"pearson": 15 / math.sqrt(228), "spearman": 1.0})
    mnli = get_task("mnli")
    assert [mnli.score_name(s, "accuracy") for s in mnli.eval_splits] == ["matched_accuracy", "mismatched_accuracy"]
    assert mnli.main_metric == "matched_accuracy"


def test_mmlu_accuracy_overall_and_per_subject():
    examples = [Example("q", label=0, group="algebra"), Example("q", label=1, group="algebra"),
                Example("q", label=2, group="algebra"), Example("q", label=3, group="law")]
    scores = get_task("mmlu").metrics([0, 1, 0, 0], examples)
    assert scores["accuracy"] == 0.5  # 2 of 4 questions
    assert scores["subject/algebra"] == pytest.approx(2 / 3)
    assert scores["subject/law"] == 0.0
    assert scores["subject_average"] == pytest.approx(1 / 3)


def test_alpaca_scores_the_mean_loss_per_response_token():
    scores = get_task("alpaca").metrics([(2.0, 2), (1.0, 2)], [Example("p", target="a")] * 2)
    assert scores["loss"] == pytest.approx(0.75)
    assert scores["perplexity"] == pytest.approx(math.exp(0.75))
