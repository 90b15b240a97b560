"""Read what each tracker wrote with its own local reader (TensorBoard's EventAccumulator, MlflowClient, the
W&B offline run file through wandb's record protocol, trackio's SQLite database)."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path
from typing import Any

WANDB_BLOCK = 32768  # the .wandb file: a 7-byte header, then LevelDB-log records in 32 KiB blocks
FULL, LAST = 1, 4  # record types that end a record (FIRST = 2 and MIDDLE = 3 continue one)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) points, as TensorBoard shows them (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_client(store: Path) -> Any:
    """A client of the local file store (MLflow 3 reads it only with MLFLOW_ALLOW_FILE_STORE set)."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=store.resolve().as_uri())


def mlflow_runs(store: Path, experiment: str) -> list[Any]:
    client = mlflow_client(store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {store}"
    return client.search_runs([found.experiment_id])


def mlflow_history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow_client(store)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def wandb_records(path: Path) -> list[Any]:
    """The protocol-buffer records of one offline run file (``run-<id>.wandb``)."""
    from wandb.proto import wandb_internal_pb2

    data, records, chunks = path.read_bytes(), [], []
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position = 7
    while position + 7 <= len(data):
        left = WANDB_BLOCK - position % WANDB_BLOCK
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # a block's zero-filled tail
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def wandb_offline_run(root: Path) -> dict[str, Any]:
    """One offline run folder's id, project, name, tags, config, history points and summary, from all its
    ``run-*.wandb`` files (a resumed run writes a second folder with the same id)."""
    files = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {root}"
    run: dict[str, Any] = {"ids": set(), "config": {}, "history": {}, "summary": {}, "files": len(files)}
    for file in files:
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["ids"].add(record.run.run_id)
                run.update(project=record.run.project, name=record.run.display_name, tags=list(record.run.tags))
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_"):
                        run["history"].setdefault(key, []).append((record.history.step.num, value))
            elif kind == "summary":
                run["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.summary.update})
    return run


def trackio_run(database: Path, name: str) -> dict[str, Any]:
    """A trackio run's metric points by key and its config, read from the project's SQLite file."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (name,)).fetchall()
        configs = connection.execute("SELECT config FROM configs WHERE run_name = ?", (name,)).fetchall()
    points: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in rows:
        for key, value in json.loads(metrics).items():
            points.setdefault(key, []).append((step, value))
    return {"points": points, "config": json.loads(configs[0][0]) if configs else None}
