#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU, about 8 minutes on an H100/H200-class GPU.
#   bash benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]
# 1. the whole test suite on the GPU (tests/test_cuda.py runs only there);
# 2. bench_loop.py at RAF-DB size (12,271 training and 3,068 test images, 50 epochs, 112 px): train.py
#    with default flags, then --compile and --amp fp16, ResNet-18 and the face Swin-T, each against the
#    bare steps on the same GPU (images/s, wall time, peak GPU memory, the fraction of the bare bf16 step);
# 3. where two or more GPUs are present: bench_ddp.py, train.py under torchrun on 2 GPUs (DDP, NCCL) against
#    1 GPU at the same global batch (images/s, the scaling), and with --sync-bn.
# Every output goes to OUT_DIR; nothing stops at the first failure. A machine without internet access
# needs ftfy (the CLIP tokenizer's one extra package): pass a folder of wheels as WHEEL_DIR
# (pip download --no-deps ftfy wcwidth), or install it beforehand.
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu.txt"
if ! python3 -c "import ftfy, regex" 2>/dev/null; then
  if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --find-links "$wheels" ftfy wcwidth regex 2>&1 | tee -a "$out/gpu.txt"
  else
    python3 -m pip install -q ftfy regex 2>&1 | tee -a "$out/gpu.txt"
  fi
fi

step() {  # step NAME COMMAND...: run, keep the whole log, record the status and the seconds
  local name=$1; shift
  local start=$(date +%s)
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.log"
}

step tests python3 -m pytest -q -rs tests/test_cuda.py tests/test_data.py tests/test_model.py tests/test_losses.py tests/test_train.py tests/test_evaluate.py tests/test_distributed.py
size=(--device cuda --num-train 12271 --num-test 3068 --epochs 50 --num-workers 8)
step loop_resnet18 python3 benchmarks/bench_loop.py "${size[@]}" --out "$out/loop_resnet18.json"
step loop_resnet18_compile python3 benchmarks/bench_loop.py "${size[@]}" --train-flags=--compile \
    --out "$out/loop_resnet18_compile.json"
step loop_resnet18_fp16 python3 benchmarks/bench_loop.py "${size[@]}" --amp fp16 \
    --out "$out/loop_resnet18_fp16.json"
step loop_swin_face python3 benchmarks/bench_loop.py "${size[@]}" --backbone swin_t_face \
    --out "$out/loop_swin_face.json"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  step ddp_2gpu python3 benchmarks/bench_ddp.py --nproc 2 --device cuda --num-train 12271 \
      --num-test 3068 --epochs 4 --num-workers 8 --out "$out/ddp_2gpu.json"
else
  echo "ddp_2gpu: skipped (fewer than 2 GPUs: $(nvidia-smi -L 2>/dev/null | wc -l))" | tee -a "$out/summary.txt"
fi
cat "$out/summary.txt"
