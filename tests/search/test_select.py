"""``peftlab select`` end to end on a tiny BERT: budgets hold, the outputs are written, the recommended config
trains with ``peftlab train --config``, and every bad input is refused before anything trains."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

from peftlab.cli import main
from peftlab.search.trials import REJECTED

BUDGET = 10.0  # % of the tiny base: its new head alone is ~4%, so some methods fit and some do not


def trials_of(folder) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="select", storage=f"sqlite:///{folder}/study.db").trials


def test_a_search_keeps_to_its_budget_and_recommends_a_config_train_accepts(select_command, tmp_path, capsys):
    output = tmp_path / "select"
    assert main(select_command("--budget", f"trainable={BUDGET}%", "--trials", "6", "--finalists", "1",
                               "--methods", "bitfit", "ia3", "prefix_tuning", "unipelt")) == 0
    trials = trials_of(output)
    assert len(trials) >= 6
    for trial in trials:
        over = trial.user_attrs["trainable_percent"] > BUDGET
        assert (REJECTED in trial.user_attrs) == over
        if over:  # rejected before it trained: no evaluation was ever reported
            assert trial.state == optuna.trial.TrialState.PRUNED and not trial.intermediate_values
    assert any(REJECTED not in trial.user_attrs for trial in trials)
    for name in ("report.md", "pareto.json", "history.png", "pareto.png", "recommended.yaml"):
        assert (output / name).is_file(), name
    fronts = json.loads((output / "pareto.json").read_text())
    assert fronts["fronts"]["trainable"] and len(fronts["finals"]) == 1
    assert (output / "finals" / f"trial-{fronts['finals'][0]['trial']}-seed0" / "metrics.json").is_file()
    assert fronts["finals"][0]["dev_stdev"] is None  # one seed has no spread: shown as "–", never as 0
    recommended = yaml.safe_load((output / "recommended.yaml").read_text())
    assert recommended["method"] == fronts["finals"][0]["candidate"]["method"]
    capsys.readouterr()
    assert main(["train", "--config", str(output / "recommended.yaml"), "--output", str(tmp_path / "train"),
                 "--no-progress"]) == 0
    record = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert record["method"] == recommended["method"] and record["parameters"]["trainable_percent"] <= BUDGET


def test_a_finished_search_rerun_trains_nothing_more(select_command, tmp_path):
    arguments = select_command("--budget", "trainable=10%", "--trials", "2", "--methods", "bitfit", "--stage",
                               "search")
    assert main(arguments) == 0
    before = [(t.number, t.state) for t in trials_of(tmp_path / "select")]
    assert main(arguments) == 0
    assert [(t.number, t.state) for t in trials_of(tmp_path / "select")] == before


def refused(arguments: list[str], capsys) -> str:
    assert main(arguments) == 2
    return capsys.readouterr().err


def test_an_unknown_budget_is_refused_before_anything_is_written(select_command, tmp_path, capsys):
    error = refused(select_command("--budget", "speed=2"), capsys)
    assert "unknown budget 'speed'; known: trainable, memory, hours" in error
    assert not (tmp_path / "select").exists()


def test_a_budget_no_method_meets_is_refused_before_anything_trains(select_command, tmp_path, capsys):
    error = refused(select_command("--budget", "trainable=1%", "--budget", "memory=1GiB"), capsys)
    assert "no method in the search space meets the budgets" in error and "raise a budget" in error
    assert "lora: trainable" in error
    assert not (tmp_path / "select").exists()


def test_a_model_the_search_cannot_adapt_is_refused(select_command, tiny_workspace, tmp_path, capsys):
    folder = tmp_path / "tiny-distilbert"
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4,
                                                         hidden_dim=64, max_position_embeddings=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_workspace["model"]).save_pretrained(folder)
    arguments = select_command("--budget", "trainable=10%")
    arguments[arguments.index("--model") + 1] = str(folder)
    error = refused(arguments, capsys)
    assert "'distilbert' model; the search chooses target modules by the presets" in error
    assert not (tmp_path / "select").exists()


def test_a_folder_of_other_files_and_a_study_of_other_settings_are_refused(select_command, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    error = refused(select_command("--budget", "trainable=10%", output=str(tmp_path / "notes")), capsys)
    assert "already holds 1 entry (todo.txt)" in error
    assert main(select_command("--budget", "trainable=10%", "--trials", "1", "--methods", "bitfit",
                               "--stage", "search")) == 0
    error = refused(select_command("--budget", "trainable=20%", "--trials", "1", "--methods", "bitfit"), capsys)
    assert "holds a search with other settings (budgets: study has ['trainable=10%'], asked ['trainable=20%'])" in error


def test_the_hours_budget_ends_the_search(select_command, tmp_path):
    assert main(select_command("--budget", "trainable=10%", "--budget", "hours=0.0003", "--trials", "50",
                               "--methods", "bitfit", "--stage", "search")) == 0  # about one second
    trials = trials_of(tmp_path / "select")
    assert 1 <= len(trials) < 50


def test_the_finals_run_as_their_own_stage_and_a_finished_final_is_not_trained_again(select_command, tmp_path):
    search = select_command("--budget", "trainable=10%", "--trials", "2", "--methods", "ia3", "--stage", "search")
    assert main(search) == 0
    assert not (tmp_path / "select" / "finals").exists()
    finals = [*search[:-1], "finals", "--finalists", "1"]
    finals[finals.index("--seeds") + 1: finals.index("--seeds") + 2] = ["0", "1"]
    assert main(finals) == 0
    records = sorted((tmp_path / "select" / "finals").glob("*/metrics.json"))
    assert len(records) == 2  # one finalist, two seeds
    written = [record.stat().st_mtime_ns for record in records]
    assert main(finals) == 0
    assert [record.stat().st_mtime_ns for record in records] == written
    assert len(trials_of(tmp_path / "select")) == 2  # the finals stage ran no trial


def test_the_report_counts_the_compute_of_every_trial_and_final(select_command, tmp_path):
    """Pruned and stopped trials count the steps they trained, rejected ones none; the finals count theirs."""
    assert main(select_command("--budget", "trainable=10%", "--trials", "5", "--finalists", "1", "--methods",
                               "bitfit", "ia3", "unipelt", "--patience", "1")) == 0
    trials = trials_of(tmp_path / "select")
    for trial in trials:
        if REJECTED in trial.user_attrs:
            assert "steps_trained" not in trial.user_attrs
        elif trial.state == optuna.trial.TrialState.COMPLETE and not trial.user_attrs.get("stopped_early"):
            assert trial.user_attrs["steps_trained"] == 4  # --max-steps
        else:  # pruned or stopped early: at its last evaluation (every step here)
            assert trial.user_attrs["steps_trained"] == max(trial.intermediate_values)
        assert trial.user_attrs.get("seconds", 0.0) >= 0.0
    spent = json.loads((tmp_path / "select" / "pareto.json").read_text())["compute"]
    trained = [t for t in trials if "steps_trained" in t.user_attrs]
    assert spent["search"] == {"runs": len(trained), "steps": sum(t.user_attrs["steps_trained"] for t in trained),
                               "seconds": pytest.approx(sum(t.user_attrs["seconds"] for t in trained))}
    assert spent["finals"]["runs"] == 1 and spent["finals"]["steps"] == 4 and spent["finals"]["seconds"] > 0
    assert spent["examples_per_step"] == 8
    report = (tmp_path / "select" / "report.md").read_text()
    total = spent["search"]["steps"] + 4
    assert f"| total | {len(trained) + 1} | {total:,} | {total * 8:,} |" in report
