"""--holdout: hyperparameters chosen on training examples set aside, never on the dev set."""

from __future__ import annotations

import pytest

from peftlab.tasks import Example
from peftlab.train.args import ArgumentError, TrainArgs
from peftlab.train.plan import split_holdout


def examples(count: int) -> list[Example]:
    return [Example(text=f"sentence {i}", label=i % 2) for i in range(count)]


def test_the_held_out_examples_leave_training_and_are_the_same_for_every_seed() -> None:
    data = examples(100)
    train, held = split_holdout(data, TrainArgs(model="m", task="sst2", holdout=20, seed=0))
    again_train, again_held = split_holdout(data, TrainArgs(model="m", task="sst2", holdout=20, seed=7))
    assert len(held) == 20 and len(train) == 80 and held == again_held and train == again_train
    assert {e.text for e in train}.isdisjoint(e.text for e in held)


def test_without_holdout_nothing_is_set_aside() -> None:
    data = examples(10)
    assert split_holdout(data, TrainArgs(model="m", task="sst2")) == (data, None)


def test_a_holdout_that_leaves_nothing_to_train_is_refused() -> None:
    with pytest.raises(ArgumentError, match="--holdout 10 leaves nothing"):
        split_holdout(examples(10), TrainArgs(model="m", task="sst2", holdout=10))


def test_the_command_line_of_a_run_reads_back_as_the_same_run() -> None:
    from peftlab.cli.train import train_args
    from peftlab.cli import build_parser

    args = TrainArgs(model="minilm-l6", task="sst2", method="lora", seed=3, learning_rate=3e-4, holdout=50,
                     options={"rank": 4, "target_modules": ("attention_qv", "feed_forward")}, progress=False,
                     group_by_length=False, eval_tasks=("mmlu",))
    words = args.command_line()
    parsed = train_args(build_parser().parse_args(words[1:]))
    assert parsed.command_line() == words
    assert {k: v for k, v in vars(parsed).items() if k != "options"} == {k: v for k, v in vars(args).items() if k != "options"}
