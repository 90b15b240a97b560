"""Without lm-evaluation-harness installed, ``peftlab eval --harness`` names the extra to install."""

from __future__ import annotations

import sys

from peftlab.cli import main


def test_without_lm_eval_the_error_names_the_extra(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    assert main(["eval", "--model", str(tiny_models["llama"]), "--harness", "mmlu_local", "--data-dir",
                 str(tmp_path)]) == 2
    assert "pip install 'peftlab[harness]'" in capsys.readouterr().err
