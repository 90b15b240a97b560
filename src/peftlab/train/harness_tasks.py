"""lm-evaluation-harness tasks that read peftlab's local data, for machines without network access.

lm-eval's own ``mmlu`` reads the hub dataset ``cais/mmlu``. ``mmlu_local`` asks the same questions the same
way (lm-eval's MMLU prompt, ``first_n`` few-shot examples from the subject's ``dev`` questions, accuracy from
the likelihood of `` A`` .. `` D``, a group averaged over all questions), read from ``<data>/mmlu`` (the layout
:mod:`peftlab.tasks.mmlu` reads). ``mmlu_local_subset`` scores peftlab's fixed ``mmlu-subset`` questions (25
per subject, 1,425 in all), so its accuracy compares with ``peftlab eval --task mmlu-subset``.

The task configs are written at run time into a temporary folder that lm-eval's ``TaskManager`` indexes
(``include_path``): one task per subject found in ``<data>/mmlu/test`` (``mmlu_local_<subject>``) and one group.
Each subject's questions go to a JSON Lines file first, read by ``datasets``' packaged ``json`` builder: no
hub access, and no CSV type guessing (an option "None" or "1.50" stays that text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftlab.tasks import get_task
from peftlab.tasks.mmlu import LETTERS, Mmlu, format_subject

LOCAL_TASKS = {"mmlu_local": "mmlu", "mmlu_local_subset": "mmlu-subset"}  # lm-eval name -> peftlab's task

# lm-eval's MMLU prompt (lm_eval/tasks/mmlu/default/_default_template_yaml), so scores read as its users expect.
PROMPT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}"
          "\nAnswer:")


def write_local_tasks(names: list[str], data_root: Path, folder: Path) -> None:
    """The configs (YAML) and questions (JSON Lines) of the ``LOCAL_TASKS`` in ``names``, written into ``folder``."""
    import yaml

    for name in names:
        task = get_task(LOCAL_TASKS[name])
        assert isinstance(task, Mmlu)
        test = task.subject_rows(data_root, "test")
        dev = get_task("mmlu").subject_rows(data_root, "dev") if (data_root / "mmlu" / "dev").is_dir() else {}
        subtasks = []
        for subject, rows in test.items():
            files = {"test": _write_rows(folder / name / "test" / f"{subject}.jsonl", subject, rows)}
            if dev.get(subject):
                files["dev"] = _write_rows(folder / name / "dev" / f"{subject}.jsonl", subject, dev[subject])
            subtasks.append(f"{name}_{subject}")
            config = _subject_config(subtasks[-1], subject, files, folder / "datasets-cache")
            (folder / name / f"{subtasks[-1]}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        group = {"group": name, "task": subtasks,
                 "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
                 "metadata": {"version": 1.0, "peftlab_task": task.name, "data": str(data_root / "mmlu")}}
        (folder / name / f"_{name}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def _subject_config(name: str, subject: str, files: dict[str, str], cache: Path) -> dict[str, Any]:
    return {
        "task": name,
        "task_alias": subject,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache)},
        "test_split": "test",
        **({"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}} if "dev" in files else {}),
        "output_type": "multiple_choice",
        "description": f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n",
        "doc_to_text": PROMPT,
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def _write_rows(path: Path, subject: str, rows: list[list[str]]) -> str:
    """``cais/mmlu``'s fields: question, subject, choices (four texts), answer (the right choice's index)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"question": row[0], "subject": subject, "choices": row[1:5], "answer": LETTERS.index(row[5])})
             for row in rows)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)
