"""The published assessment's suite files (benchmarks/assessment/suites) stay valid: each parses with the
bench's own checks, and E1 is the issue's shape (12 rows x 4 GLUE tasks x 3 seeds, on the MiniLM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.bench.suite_file import load_suite

SUITES = Path(__file__).resolve().parents[2] / "benchmarks" / "assessment" / "suites"
SURVEY_ROWS = {"full", "adapter", "prompt_tuning", "prefix_tuning", "ia3", "bitfit", "child_tuning", "lora",
               "adalora", "qlora", "mam", "propetl"}


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_assessment_suite_parses(path):
    assert load_suite(str(path)).runs()


def test_e1_is_every_survey_row_on_four_tasks_with_three_seeds():
    runs = load_suite(str(SUITES / "e1-glue.yaml")).runs()
    assert {r.method for r in runs} == SURVEY_ROWS
    assert {r.task for r in runs} == {"sst2", "cola", "mrpc", "stsb"}
    assert {r.seed for r in runs} == {0, 1, 2}
    assert len(runs) == len(SURVEY_ROWS) * 4 * 3
    assert all(r.model == "minilm-l6" and "learning_rate" in r.training for r in runs)


def test_the_shipped_references_are_the_committed_e1_records():
    """The quick report reads ``peftlab/bench/references.json``; it must say what the E1 records say (rerun
    ``python -m peftlab.bench.references benchmarks/assessment/records/e1-glue`` after committing records)."""
    from peftlab.bench.records import read_records
    from peftlab.bench.references import REFERENCES_FILE, load_references, references_from

    records = read_records(SUITES.parent / "records" / "e1-glue")
    shipped = load_references(REFERENCES_FILE)
    assert shipped["scores"] == references_from(records, source="")["scores"]
    assert set(shipped["scores"]["minilm-l6"]["sst2"]) == SURVEY_ROWS  # the quick suite's task, every survey row
