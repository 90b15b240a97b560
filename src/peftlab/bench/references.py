"""Converged reference scores, shipped with the package, that short runs are read against.

A quick run (the README's main job: 32 optimizer steps) ranks methods by how fast they start, not by
where they end. The report therefore puts each quick score beside the same method's converged score
from the published assessment (``benchmarks/assessment``, E1: mean ± std over seeds at the converged
budget) and marks the methods whose quick score is far below it (``FAR_POINTS``).

    python -m peftlab.bench.references benchmarks/assessment/records/e1-glue   # rewrites references.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REFERENCES_FILE = Path(__file__).parent / "references.json"
FAR_POINTS = 5.0  # a quick score this far below (or, for a loss, above) the converged mean is marked


def load_references(path: Path = REFERENCES_FILE) -> dict[str, Any]:
    """``{"source": ..., "scores": {model: {task: {method: {"mean", "std", "n"}}}}}``; empty when absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"scores": {}}


def references_from(records: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """Mean ± std per (model, task, method) over the ok records' seeds."""
    found: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    metrics: dict[tuple[str, str], tuple[str, bool]] = {}
    for record in records:
        if record.get("status") == "ok" and record.get("score") is not None:
            spec = record["spec"]
            found[(spec["model"], spec["task"], spec["label"])].append(float(record["score"]))
            metrics[(spec["model"], spec["task"])] = (record["primary_metric"], bool(record.get("greater_is_better", True)))
    scores: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for (model, task, label), values in sorted(found.items()):
        metric, greater = metrics[(model, task)]
        scores[model][task][label] = {"mean": statistics.fmean(values), "n": len(values), "metric": metric,
                                      "greater_is_better": greater,
                                      "std": statistics.stdev(values) if len(values) > 1 else None}
    return {"source": source, "scores": scores}


def is_far(score: float, reference: dict[str, Any]) -> bool:
    gap = reference["mean"] - score if reference.get("greater_is_better", True) else score - reference["mean"]
    return gap > FAR_POINTS


def reference_rows(model: str, task: str, quick: dict[str, float], references: dict[str, Any]) -> list[list[str]]:
    """``[method, quick score, converged mean ± std (n), mark]`` for the methods that have a reference."""
    known = references.get("scores", {}).get(model, {}).get(task, {})
    rows = []
    for label, score in quick.items():
        reference = known.get(label)
        if reference is None:
            continue
        spread = f" ± {reference['std']:.1f}" if reference.get("std") is not None else ""
        rows.append([label, f"{score:.1f}", f"{reference['mean']:.1f}{spread} (n={reference['n']})",
                     f"far below (> {FAR_POINTS:g} points)" if is_far(score, reference) else ""])
    return rows


def main(folders: list[str]) -> None:
    from peftlab.bench.records import read_records

    records = [record for folder in folders for record in read_records(folder)]
    document = references_from(records, source=", ".join(folders))
    REFERENCES_FILE.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{REFERENCES_FILE}: {sum(len(t) for m in document['scores'].values() for t in m.values())} references")


if __name__ == "__main__":
    main(sys.argv[1:])
