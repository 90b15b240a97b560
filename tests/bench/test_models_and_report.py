"""The cost-only stand-in model, and the report's ablation plots and files from hand-made records."""

from __future__ import annotations

import json

from transformers import AutoModelForSeq2SeqLM

from peftlab.bench.models import model_for_run
from peftlab.bench.records import RECORD_FORMAT, runs_dir
from peftlab.bench.report import write_report
from peftlab.bench.suite import RunSpec

TINY_T5 = {"model_type": "t5", "d_model": 16, "d_ff": 32, "d_kv": 4, "num_heads": 2, "num_layers": 1,
           "num_decoder_layers": 1, "vocab_size": 40, "decoder_start_token_id": 0, "pad_token_id": 0}


def spec(**changes) -> RunSpec:
    fields = {"suite": "s", "model": "t5-tiny", "model_source": "org/not-on-this-machine", "task": "wmt16-en-ro",
              "task_name": "wmt16-en-ro", "label": "lora", "method": "lora", "family": "reparameterized",
              "options": {}, "training": {}, "seed": 0}
    return RunSpec(**{**fields, **changes})


def test_unreachable_model_becomes_a_labelled_random_init_of_its_shape(tiny_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = spec(random_init=TINY_T5, tokenizer=str(tiny_workspace["model"]))
    folder, note = model_for_run(run, tmp_path)
    assert note.startswith("cost-only") and "org/not-on-this-machine" in note
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert model.config.d_model == 16 and model.config.vocab_size == 40
    assert (tmp_path / "models").is_dir()
    assert model_for_run(spec(), tmp_path) == ("org/not-on-this-machine", None)  # no fallback: used as given


def record(label: str, knobs: dict, score: float) -> dict:
    return {"format": RECORD_FORMAT, "status": "ok", "run_id": label, "score": score, "primary_metric": "accuracy",
            "spec": {"model": "m", "task": "sst2", "label": label, "method": "lora", "family": "reparameterized",
                     "seed": 0, "knobs": knobs},
            "parameters": {"trainable_percent": 0.1 * knobs["rank"]}, "memory": {"peak_bytes": 2**20}}


def test_report_plots_score_against_each_ablation_knob(tmp_path):
    runs = runs_dir(tmp_path)
    runs.mkdir(parents=True)
    for rank in (1, 4, 16):
        for targets in ("attention_qv", "all_linear"):
            label = f"lora[rank={rank},target_modules={targets}]"
            knobs = {"rank": rank, "target_modules": targets}
            (runs / f"{label}.json").write_text(json.dumps(record(label, knobs, 80 + rank / 4)))
    (runs / "not-a-record.json").write_text("{")  # ignored, not fatal
    names = {path.name for path in write_report(tmp_path)}
    assert {"ablation-m-rank.png", "ablation-m-target_modules.png", "report.md", "report.html",
            "results.csv", "results.tex", "score_vs_trainable-m.png", "score_vs_memory-m.png"} <= names
    assert "memory-m.png" not in names  # no breakdown in these records: no empty figure
    markdown = (tmp_path / "report.md").read_text()
    assert "![ablation-m-rank.png](ablation-m-rank.png)" in markdown
    assert "**84.0**" in markdown  # rank 16 is best
    assert "Memory by component" not in markdown  # no breakdown in these records: no empty table either


def test_html_page_has_the_memory_table_of_the_markdown():
    from peftlab.bench.aggregate import build_tables
    from peftlab.bench.report import Report, html_page, markdown

    mib = 2**20
    breakdown = {"weights": {"measured": 3 * mib, "predicted": 3 * mib},
                 "gradients": {"measured": mib // 2, "predicted": mib // 4},
                 "optimizer": {"measured": 2 * mib, "predicted": mib // 2},
                 "activations": {"measured": 5 * mib, "predicted": None}}
    with_breakdown = record("lora", {"rank": 4}, 80.0)
    with_breakdown["memory"] = {"peak_bytes": 9 * mib, "breakdown": breakdown}
    records = [with_breakdown, record("vera", {"rank": 1}, 70.0)]  # vera measured no breakdown: no row
    report = Report(build_tables(records), records)
    page = html_page(report)
    assert "Memory by component (one training step, MiB): measured / predicted" in page
    assert ("<tr><td><code>lora</code></td><td class='num'>3.0 / 3.0</td><td class='num'>0.5 / 0.2</td>"
            "<td class='num'>2.0 / 0.5</td><td class='num'>5.0 / –</td></tr>") in page
    assert "<code>vera</code></td><td class='num'>3.0" not in page
    assert "| `lora` | 3.0 / 3.0 | 0.5 / 0.2 | 2.0 / 0.5 | 5.0 / – |" in markdown(report)  # the same numbers


def test_report_counts_and_names_unreadable_records(tmp_path, capsys):
    from peftlab.cli import main

    runs = runs_dir(tmp_path)
    runs.mkdir(parents=True)
    for rank in (1, 4, 16):
        label = f"lora[rank={rank}]"
        (runs / f"{label}.json").write_text(json.dumps(record(label, {"rank": rank}, 80 + rank)))
    (runs / "lora[rank=64].json").write_text('{"format": "peftlab-run/1", "status": "o')  # cut short by a full disk
    (runs / "notes.json").write_text('{"mine": true}')
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert ("warning: 2 run record(s)" in err and "lora[rank=64].json (not valid JSON, line 1: Unterminated string" in err
            and "notes.json (not a peftlab-run/1 record (format: None))" in err), err
    summary = (tmp_path / "report.md").read_text()
    assert "runs: 3 ok, 0 failed, 2 unreadable record(s) left out: lora[rank=64].json (not valid JSON, line 1" in summary


def test_report_of_a_folder_of_sweeps_writes_each_its_own(tmp_path, capsys):
    from peftlab.cli import main

    for suite, ranks in (("e1", (1, 4)), ("sweep", (16,))):
        runs = runs_dir(tmp_path / "records" / suite)
        runs.mkdir(parents=True)
        for rank in ranks:
            label = f"lora[rank={rank}]"
            (runs / f"{label}.json").write_text(json.dumps(record(label, {"rank": rank}, 80 + rank)))
    assert main(["report", str(tmp_path)]) == 0
    e1, sweep = ((tmp_path / "records" / suite / "report.md").read_text() for suite in ("e1", "sweep"))
    assert "lora[rank=4]" in e1 and "lora[rank=16]" not in e1 and "lora[rank=16]" in sweep
    assert not (tmp_path / "report.md").exists()
    assert main(["report", str(tmp_path)]) == 2  # the reports are there now: replacing them takes --overwrite
    assert main(["report", str(tmp_path), "--overwrite"]) == 0


def test_quick_scores_are_shown_beside_their_converged_references(tmp_path, monkeypatch):
    from peftlab.bench import references, report

    e1 = [{**record("lora", {"rank": 8}, score), "spec": {**record("lora", {"rank": 8}, 0)["spec"], "seed": seed}}
          for seed, score in enumerate((90.0, 92.0))]
    e1 += [record("full", {"rank": 1}, 91.0)]
    monkeypatch.setattr(references, "REFERENCES_FILE", tmp_path / "references.json")
    (tmp_path / "references.json").write_text(json.dumps(references.references_from(e1, source="E1")))
    monkeypatch.setattr(report, "load_references", lambda: references.load_references(tmp_path / "references.json"))
    runs = runs_dir(tmp_path / "quick")
    runs.mkdir(parents=True)
    for label, score in (("lora", 89.0), ("full", 70.0), ("ia3", 60.0)):
        (runs / f"{label}.json").write_text(json.dumps(record(label, {"rank": 1}, score)))
    write_report(tmp_path / "quick")
    text = (tmp_path / "quick" / "report.md").read_text().split("### sst2: beside the converged reference (E1)")[1]
    assert "| `lora` | 89.0 | 91.0 ± 1.4 (n=2) |  |" in text
    assert "| `full` | 70.0 | 91.0 (n=1) | far below (> 5 points) |" in text
    assert "`ia3`" not in text.split("###")[0]  # no reference, no row


def test_html_page_writes_every_table_as_html_with_the_markdown_headers():
    from peftlab.bench.aggregate import build_tables
    from peftlab.bench.report import Report, html_page

    with_breakdown = record("lora", {"rank": 4}, 80.0)
    part = {"measured": 2**20, "predicted": 2**20}
    with_breakdown["memory"] = {"peak_bytes": 9 * 2**20, "breakdown": dict.fromkeys(
        ("weights", "gradients", "optimizer", "activations"), part)}
    failed = {**record("vera", {"rank": 1}, 0.0), "status": "failed", "score": None, "error": "out of | memory"}
    records = [with_breakdown, record("ia3", {"rank": 1}, 70.0), failed]
    page = html_page(Report(build_tables(records), records))
    assert "<pre>" not in page
    assert page.count("<table>") == page.count("<thead>") == 3  # scores, memory by component, runs
    assert "<th class='num'>sst2 (accuracy)</th>" in page  # the column names its metric, as in the Markdown
    assert "<th>run</th><th>status</th><th class='num'>score</th>" in page
    assert "<td>failed: out of / memory</td>" in page
    assert "Peak memory: CUDA max allocated on GPU, peak RSS of the run&#x27;s process on CPU." in page
