#!/usr/bin/env bash
# The prepared GPU check for issue 6, for a session that is lent a GPU: one command, about 5 minutes.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# It runs the CUDA tests, then bench_loop on CUDA at RAF-DB size (12,271 train / 3,068 test images,
# ResNet-18 at 112 px, 50 epochs): train.py's images/s and wall time against the bare fp32 and bf16
# steps on the same GPU. The lent machines lack ftfy (the tokenizer needs it): carry its wheel
# (pip download --no-deps ftfy wcwidth) and install it first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
python3 -m pytest -q tests/test_data.py tests/test_model.py tests/test_losses.py 2>&1 | tail -3 | tee "$out/tests.txt"
start=$(date +%s)
python3 benchmarks/bench_loop.py --device cuda --num-train 12271 --num-test 3068 --epochs 50 \
    --bare-steps 50 --released-steps 30 --num-workers 8 --out "$out/bench_loop.json" | tee "$out/bench_loop.txt"
echo "bench_loop wall: $(( $(date +%s) - start )) s (includes drawing 15,339 synthetic faces)" | tee -a "$out/bench_loop.txt"
