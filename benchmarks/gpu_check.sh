#!/usr/bin/env bash
# On a CUDA machine: the tests marked `cuda`, then the side-by-side benchmark on the GPU.
#
#   PEFTLAB_DATA=/path/to/data bash benchmarks/gpu_check.sh OUT_DIR [compare_peft.py options...]
#
# Writes OUT_DIR/{versions.txt,pytest.log,bench.log,RESULTS-cuda.md}; the benchmark is skipped when no
# options are given. Exit status: the tests' (the benchmark's report says for itself what failed).
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [compare_peft.py options...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"; } 2>&1 | tee "$out/versions.txt"
python3 -m pytest -m cuda -q -p no:cacheprovider -rs \
    tests/train/speedups/test_fused_ops.py tests/methods/reparameterized/test_qlora.py \
    tests/train/test_cli_runs.py tests/benchmarks/test_measure.py 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
if [ $# -gt 0 ]; then
    python3 benchmarks/compare_peft.py --device cuda --out "$out/RESULTS-cuda.md" "$@" 2>&1 | tee "$out/bench.log"
fi
exit "$status"
