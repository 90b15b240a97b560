"""The fixed stratified MMLU subset: every subject, the same 25 questions whatever the run, 0- and 5-shot alike."""

from collections import Counter

import pytest
from tasks.data_root_helper import real_data_root

from peftlab.tasks import get_task
from peftlab.tasks.mmlu import SUBSET_PER_SUBJECT


def question_of(text: str) -> str:
    """The scored question of a prompt: what follows its last few-shot example."""
    return text.rsplit("\n\n", 1)[-1]


def test_every_subject_gives_the_same_25_real_questions_0_and_5_shot():
    root = real_data_root()
    zero, five = get_task("mmlu-subset").load("test", root), get_task("mmlu-subset-5shot").load("test", root)
    assert len(zero) == 57 * SUBSET_PER_SUBJECT == 1425
    assert set(Counter(e.group for e in zero).values()) == {SUBSET_PER_SUBJECT}
    assert [question_of(e.text) for e in zero] == [question_of(e.text) for e in five]
    assert all(e.text.count("\nAnswer: ") == 5 for e in five)
    assert [e.label for e in zero] == [e.label for e in five]
    # Pinned: the draw depends on the subject's name alone (a change here changes every published score).
    assert question_of(zero[0].text).startswith("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18))")
    full = get_task("mmlu").load("test", root)
    assert {question_of(e.text) for e in zero} <= {question_of(e.text) for e in full}
    first = [e for e in full if e.group == "abstract_algebra"]
    kept = [e for e in first if e in set(zero)]
    assert kept == [e for e in zero if e.group == "abstract_algebra"]  # file order


def test_the_subset_does_not_depend_on_the_run_seed():
    from peftlab.train.args import TrainArgs
    from peftlab.train.plan import eval_sets_for

    root, task = real_data_root(), get_task("mmlu-subset")
    chosen = [eval_sets_for(task, TrainArgs(model="m", task="alpaca", seed=seed, data_dir=str(root)))[0].examples
              for seed in (0, 42)]
    assert chosen[0] == chosen[1]


@pytest.mark.parametrize("rows", [3, 40])
def test_a_small_subject_keeps_all_its_questions_a_large_one_25(tmp_path, rows):
    for split, count in (("dev", 5), ("test", rows)):
        folder = tmp_path / "mmlu" / split
        folder.mkdir(parents=True)
        lines = "".join(f"question {i},a,b,c,d,{'ABCD'[i % 4]}\n" for i in range(count))
        (folder / f"astronomy_{split}.csv").write_text(lines)
    examples = get_task("mmlu-subset-5shot").load("test", tmp_path)
    assert len(examples) == min(rows, SUBSET_PER_SUBJECT)
    numbers = [int(question_of(e.text).split("\n")[0].split()[1]) for e in examples]
    assert numbers == sorted(numbers)
