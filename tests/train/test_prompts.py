"""Multiple-choice prompts longer than the model takes keep their header, question and options: whole
few-shot examples go first (the last first), then the start; evaluation counts what was cut."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peftlab.tasks import get_task
from peftlab.train.encoding import encode_prompts
from peftlab.train.evaluation import evaluate, prompt_limit
from train.tiny import char_tokenizer

HEADER = "The following are multiple choice questions (with answers) about astronomy.\n\n"


def question(number: int, answer: str = "A") -> list[str]:
    return [f"what is star {number}?", "one", "two", "three", "four", answer]


@pytest.fixture
def five_shot(tmp_path):
    """Two 5-shot astronomy questions read by the real MMLU loader from a tiny data folder."""
    for split, rows in (("dev", [question(n) for n in range(1, 6)]), ("test", [question(8, "B"), question(9, "C")])):
        folder = tmp_path / "mmlu" / split
        folder.mkdir(parents=True)
        (folder / f"astronomy_{split}.csv").write_text("".join(",".join(row) + "\n" for row in rows))
    return get_task("mmlu-5shot").load("test", tmp_path)


def shot(number: int) -> str:
    return f"what is star {number}?\nA. one\nB. two\nC. three\nD. four\nAnswer: A\n\n"


def tail(number: int) -> str:
    return f"what is star {number}?\nA. one\nB. two\nC. three\nD. four\nAnswer:"


def length(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def test_whole_shots_go_last_first_keeping_header_question_and_options(five_shot):
    tokenizer = char_tokenizer("gpt2")
    assert five_shot[0].text == HEADER + "".join(shot(n) for n in range(1, 6)) + tail(8)
    two_shots = HEADER + shot(1) + shot(2) + tail(8)
    limit = length(tokenizer, two_shots)  # room for the header, two examples and the question, not three
    assert length(tokenizer, five_shot[0].text) > limit
    features, cuts = encode_prompts(five_shot[:1], tokenizer, limit)
    assert features[0]["input_ids"] == tokenizer(two_shots)["input_ids"]
    assert (cuts.prompts, cuts.shots) == (1, 3)


def test_a_question_longer_than_the_limit_loses_its_start_not_its_options(five_shot):
    tokenizer = char_tokenizer("gpt2")
    features, cuts = encode_prompts(five_shot[:1], tokenizer, 30)
    assert features[0]["input_ids"] == tokenizer(tail(8))["input_ids"][-30:]  # ends at "Answer:"
    assert (cuts.prompts, cuts.shots) == (1, 5)
    fits, none = encode_prompts(five_shot[:1], tokenizer, 10_000)
    assert fits[0]["input_ids"] == tokenizer(five_shot[0].text)["input_ids"] and (none.prompts, none.shots) == (0, 0)


def test_evaluation_reads_as_far_as_the_model_takes_and_reports_the_cuts(five_shot):
    tokenizer = char_tokenizer("gpt2")
    positions = length(tokenizer, HEADER + shot(1) + shot(2) + tail(8))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=16, n_layer=1, n_head=2, n_positions=positions,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2))
    assert prompt_limit(model, tokenizer, max_length=16) == positions  # not the training max_length
    with pytest.warns(UserWarning, match="2 of 2 prompts were longer than"):
        scores = evaluate(model, tokenizer, "decoder", get_task("mmlu-5shot"), five_shot, batch_size=2,
                          max_length=16)
    # Both questions keep the header and two of their five examples.
    assert scores["prompts_shortened"] == 2 and scores["shots_dropped"] == 2 * 3
    assert 0 <= scores["accuracy"] <= 1


def test_training_prompts_drop_whole_shots_before_losing_their_start(five_shot):
    """mmlu-5shot training (decoder and T5) keeps the header, the kept shots and the question whole."""
    from peftlab.train.encoding import encode

    tokenizer = char_tokenizer("gpt2")
    task = get_task("mmlu-5shot")
    two_shots = HEADER + shot(1) + shot(2) + tail(8)
    target_length = len(tokenizer(task.separator + five_shot[0].target, add_special_tokens=False)["input_ids"]) + 1
    limit = length(tokenizer, two_shots) + target_length
    (causal,) = encode(task, five_shot[:1], tokenizer, "decoder", limit)
    prompt = [i for i, label in zip(causal["input_ids"], causal["labels"]) if label == -100]
    assert prompt == tokenizer(two_shots)["input_ids"]
    (seq2seq,) = encode(task, five_shot[:1], tokenizer, "encoder-decoder", length(tokenizer, two_shots))
    assert seq2seq["input_ids"] == tokenizer(two_shots)["input_ids"]
