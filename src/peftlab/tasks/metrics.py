"""The official scores, computed by the libraries the benchmarks' own scripts use."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def binary_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """The unweighted mean of every class's F1 (a rare class counts as much as a common one)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def matthews(predictions: Sequence[int], labels: Sequence[int]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson_spearman(predictions: Sequence[float], scores: Sequence[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": float(pearsonr(predictions, scores)[0]), "spearman": float(spearmanr(predictions, scores)[0])}


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU on detokenized text with sacreBLEU's default 13a tokenization."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def chrf_score(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (character n-gram F-score, sacreBLEU's defaults), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def token_loss(predictions: Sequence[tuple[float, int]]) -> dict[str, float]:
    """Mean cross-entropy per token (nats) and its perplexity, from per-sequence (summed loss, token count)."""
    import math

    total = sum(loss for loss, _ in predictions)
    tokens = sum(count for _, count in predictions)
    loss = total / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan")}
