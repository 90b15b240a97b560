"""``peftlab train --help`` is written from its sources: each flag's help is its ``TrainArgs`` field's with the
field's default (or that it is required), ``--task`` names every registered task, and the text is plain (no
reST markup)."""

from __future__ import annotations

import argparse
import dataclasses

from peftlab.cli import train
from peftlab.tasks import task_names
from peftlab.train.args import TrainArgs


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers())
    return parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]


def flag_helps() -> dict[str, str | None]:
    return {action.dest: action.help for action in train_parser()._actions}


def test_the_task_flag_names_every_registered_task():
    help_text = flag_helps()["task"].removesuffix(" (required, here or in --config)")
    assert all(name in help_text.split(": ")[-1].split(", ") for name in task_names())


def test_required_flags_say_so_and_the_others_show_their_default():
    helps = flag_helps()
    assert helps["model"].endswith("(required, here or in --config)")
    assert helps["method"].endswith("(default: lora)")
    assert helps["seed"] == f"default: {TrainArgs.__dataclass_fields__['seed'].default}"
    assert helps["output_dir"].endswith("write nothing)")  # default None: nothing to show


def test_the_help_text_is_plain():
    text = train_parser().format_help()
    assert "``" not in text and ":class:" not in text and ":func:" not in text


def test_each_flag_says_what_its_field_says():
    helps = flag_helps()
    for field in dataclasses.fields(TrainArgs):
        own = field.metadata.get("help")
        if own is None:
            assert helps[field.name] in (None, f"default: {field.default}"), field.name
            continue
        assert own in helps[field.name], field.name
        turns_off = field.type in (bool, "bool") and field.default is True
        assert helps[field.name].startswith("turn off (on by default): ") == turns_off, field.name


def test_the_cli_keeps_no_help_text_of_its_own():
    assert not hasattr(train, "HELP")
