"""Suite files: expansion, sharding, and rejection of bad entries before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftlab.bench import load_suite_checked
from peftlab.bench.runner import Shard, run_sweep
from peftlab.bench.suite import SuiteError
from peftlab.bench.suite_file import available_suites, load_suite

SUITE = {
    "name": "t",
    "seeds": [0, 1],
    "models": ["m1", {"model": "org/m2", "name": "m2"}],
    "tasks": ["sst2", {"task": "rte", "training": {"max_train_samples": 8}}],
    "training": {"epochs": 1, "learning_rate": 1.0e-3},
    "methods": [
        {"full": {"training": {"learning_rate": 1.0e-5}}},
        {"method": "lora", "grid": {"rank": [1, 4], "target_modules": ["attention_qv", "all_linear"]}},
    ],
}


def write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_expansion_is_the_product_with_merged_training(tmp_path):
    suite = load_suite_checked(write(tmp_path, SUITE))
    runs = suite.runs()
    assert len(runs) == 2 * 2 * (1 + 4) * 2
    assert len({run.run_id for run in runs}) == len(runs)
    full = next(r for r in runs if r.method == "full" and r.task == "rte")
    assert full.training == {"epochs": 1, "learning_rate": 1.0e-5, "max_train_samples": 8}
    lora = [r for r in runs if r.method == "lora" and r.model == "m2" and r.task == "sst2" and r.seed == 1]
    assert {r.label for r in lora} == {f"lora[rank={k},target_modules={t}]" for k in (1, 4)
                                       for t in ("attention_qv", "all_linear")}
    assert all(r.knobs == {"rank": r.options["rank"], "target_modules": r.options["target_modules"]} for r in lora)
    assert {r.model_source for r in runs} == {"m1", "org/m2"}


def test_experiments_inherit_the_top_level(tmp_path):
    data = {**SUITE, "experiments": [{"tasks": ["cola"]}, {"models": ["m3"], "seeds": [5],
                                                            "training": {"epochs": 2}}]}
    runs = load_suite_checked(write(tmp_path, data)).runs()
    assert len(runs) == 2 * 1 * 5 * 2 + 1 * 2 * 5 * 1
    m3 = [r for r in runs if r.model == "m3"]
    assert {r.seed for r in m3} == {5} and all(r.training["epochs"] == 2 for r in m3)
    assert all(r.training["learning_rate"] in (1.0e-3, 1.0e-5) for r in m3)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_the_sweep(tmp_path, shards):
    runs = load_suite_checked(write(tmp_path, SUITE)).runs()
    parts = [Shard(k, shards).select(runs) for k in range(1, shards + 1)]
    ids = [run.run_id for part in parts for run in part]
    assert sorted(ids) == sorted(run.run_id for run in runs)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "2"])
def test_bad_shard_is_rejected(text):
    with pytest.raises(SuiteError, match="--shard"):
        Shard.parse(text)


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": ["lora", "not_a_method"]}, "unknown method 'not_a_method'"),
    ({"tasks": ["sst2", "no_such_task"]}, "unknown task 'no_such_task'"),
    ({"methods": [{"lora": {"options": {"rank": 0}}}]}, "rank"),
    ({"methods": [{"lora": {"options": {"nope": 1}}}]}, "no option 'nope'"),
    ({"methods": [{"adalora": {"steps_option": "total_steps"}}]}, "unknown key"),  # train sets total_steps itself
    ({"methods": [{"method": "lora", "grid": {"learning_rat": [1.0]}}]}, "unknown training setting"),
    ({"training": {"learning_rat": 1.0}}, "unknown training setting"),
    ({"training": {"epochs": 0}}, "epochs"),
    ({"methods": ["lora", {"method": "lora"}]}, "runs repeat"),
    ({"seeds": []}, "seeds"),
    ({"modles": ["m"]}, "unknown key"),
])
def test_bad_suites_are_rejected_before_anything_runs(tmp_path, change, message):
    path = write(tmp_path, {**SUITE, **change})
    with pytest.raises(SuiteError, match=message):
        runs = load_suite_checked(path).runs()
        run_sweep(runs, tmp_path / "out")  # never reached: validation comes first
    assert not (tmp_path / "out").exists()


def test_unknown_suite_names_the_builtins():
    with pytest.raises(SuiteError, match="quick"):
        load_suite("no-such-suite")


@pytest.mark.parametrize("name", available_suites())
def test_builtin_suites_are_valid(name):
    runs = load_suite_checked(name).runs()
    assert runs and len({run.run_id for run in runs}) == len(runs)


def test_cli_rejects_a_bad_suite_with_one_line_and_writes_nothing(tmp_path, capsys):
    from peftlab.cli import main

    path = write(tmp_path, {**SUITE, "methods": ["lora", "lorra"]})
    assert main(["bench", "--suite", path, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "unknown method 'lorra'" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_lists_a_shard(tmp_path, capsys):
    from peftlab.cli import main

    path = write(tmp_path, SUITE)
    assert main(["bench", "--suite", path, "--output", str(tmp_path / "out"), "--list", "--shard", "2/3"]) == 0
    listed = capsys.readouterr().out.split()
    runs = load_suite_checked(path).runs()
    assert listed == [run.run_id for run in Shard(2, 3).select(runs)]


def test_a_grid_over_a_training_setting_sets_it_per_run(tmp_path):
    path = write(tmp_path, {**SUITE, "methods": [{"method": "lora", "options": {"rank": 4},
                                                  "grid": {"learning_rate": [1.0e-4, 1.0e-3], "rank": [2]}}]})
    runs = load_suite_checked(path).runs()
    first = [r for r in runs if (r.model, r.task, r.seed) == (runs[0].model, runs[0].task, runs[0].seed)]
    assert [(r.training["learning_rate"], r.options) for r in first] == [
        (1.0e-4, {"rank": 2}), (1.0e-3, {"rank": 2})]
    assert all("learning_rate" not in r.options for r in runs)


def test_an_untuned_entry_is_the_base_model_row_and_takes_no_options(tmp_path):
    from peftlab.bench.suite import UNTUNED
    from peftlab.train.args import UNTUNED as TRAIN_UNTUNED

    assert UNTUNED == TRAIN_UNTUNED
    data = {**SUITE, "tasks": ["sst2"], "seeds": [0],
            "methods": ["untuned", {"untuned": {"label": "base-5shot", "training": {"eval_tasks": ["mmlu"]}}}, "lora"]}
    runs = load_suite_checked(write(tmp_path, data)).runs()
    untuned = [r for r in runs if r.method == "untuned"]
    assert {r.label for r in untuned} == {"untuned", "base-5shot"} and {r.family for r in untuned} == {"baseline"}
    assert next(r for r in untuned if r.label == "base-5shot").training["eval_tasks"] == ["mmlu"]
    with pytest.raises(SuiteError, match="unknown key.*options"):
        load_suite(write(tmp_path, {**data, "methods": [{"untuned": {"options": {"rank": 4}}}]}))
