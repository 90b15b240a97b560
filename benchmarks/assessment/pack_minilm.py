"""Carry the MiniLM's weights to a lent GPU machine, which takes at most 64 MiB per call (the fp32 weights are 91 MB).

    python benchmarks/assessment/pack_minilm.py pack SAFETENSORS USED_IDS.json FOLDER    # here
    python benchmarks/assessment/pack_minilm.py unpack FOLDER SAFETENSORS                # there

Only the word-embedding rows of token ids that occur in the data carried along are kept (the others are
written back as zeros), and each fp32 byte plane is xz-compressed on its own (the exponent bytes compress
well). For a run on that data this model computes exactly what the original does: a row of a token that
never occurs is never read, gets a zero gradient, and with no weight decay AdamW never moves it, so every
score, gradient and parameter count is the original's. ``manifest.json`` holds each tensor's name and
shape and the sha256 of the unpacked file, which ``unpack`` checks.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

EMBEDDING = "embeddings.word_embeddings.weight"


def pack(weights: Path, used_ids: Path, folder: Path) -> None:
    tensors = load_file(weights)
    used = np.array(sorted(json.loads(used_ids.read_text())), dtype=np.int64)
    flat = np.concatenate([tensors[EMBEDDING][used].ravel()] +
                          [tensor.ravel() for name, tensor in tensors.items() if name != EMBEDDING]).astype("<f4")
    planes = flat.view(np.uint8).reshape(-1, 4)
    folder.mkdir(parents=True, exist_ok=True)
    for plane in range(4):
        (folder / f"plane{plane}.xz").write_bytes(lzma.compress(planes[:, plane].tobytes(), preset=6))
    rebuilt = folder / "check.safetensors"
    save_file(restore(tensors_shapes(tensors), used, flat), rebuilt)
    manifest = {"shapes": tensors_shapes(tensors), "used_ids": used.tolist(), "sha256": sha256(rebuilt)}
    rebuilt.unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def unpack(folder: Path, weights: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    planes = [np.frombuffer(lzma.decompress((folder / f"plane{p}.xz").read_bytes()), np.uint8) for p in range(4)]
    flat = np.stack(planes, axis=1).reshape(-1).view("<f4")
    save_file(restore(manifest["shapes"], np.array(manifest["used_ids"]), flat), weights)
    if sha256(weights) != manifest["sha256"]:
        raise SystemExit(f"{weights}: sha256 differs from the packed model's")


def tensors_shapes(tensors: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in tensors.items()}


def restore(shapes: dict[str, list[int]], used: np.ndarray, flat: np.ndarray) -> dict[str, np.ndarray]:
    embedding = np.zeros(shapes[EMBEDDING], dtype=np.float32)
    width = shapes[EMBEDDING][1]
    embedding[used] = flat[:len(used) * width].reshape(len(used), width)
    tensors, offset = {EMBEDDING: embedding}, len(used) * width
    for name, shape in shapes.items():
        if name != EMBEDDING:
            size = int(np.prod(shape))
            tensors[name] = flat[offset:offset + size].reshape(shape).copy()
            offset += size
    return tensors


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    pack(*map(Path, paths)) if command == "pack" else unpack(*map(Path, paths))
