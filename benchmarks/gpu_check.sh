#!/usr/bin/env bash
# The GPU check, for a host with an NVIDIA GPU, its own torch and no network, in at most
# GPU_CHECK_SECONDS (330 by default; a step past its share is stopped: exit 124):
#   bash benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]
# 1. tests/test_cuda.py;
# 2. bench_loop.py at RAF-DB size (12,271 training and 3,068 test images, 112 px, batch 64): train.py
#    --amp auto (ResNet-18) for 50 epochs, then --amp fp16, --backbone swin_t_face and --compile over
#    4 epochs, their 50-epoch wall time scaled; each against the bare step on the same GPU, peak GPU
#    memory included. --compile is skipped, saying why, where a tiny torch.compile cannot build (it
#    needs a C compiler and Python's headers);
# 3. bench_data.py: the uint8 cache + BatchAugment on the GPU against a per-sample DataLoader;
# 4. with two or more GPUs: bench_loop.py --nproc 2 (DDP, NCCL) against 1 process.
# OUT_DIR gets each step's log and JSON, gpu.txt and summary.txt (a line per step); nothing stops at
# the first failure. Modules missing beside the host's torch (ftfy) are installed from WHEEL_DIR
# into OUT_DIR/site. Make WHEEL_DIR on a machine with network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform any \
#       -d WHEEL_DIR ftfy wcwidth
# Rehearsal without a GPU (the same steps at tiny sizes, a few minutes on 2 cores):
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh OUT_DIR
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
: >"$out/summary.txt"
export PYTHONUNBUFFERED=1
device=${GPU_CHECK_DEVICE:-cuda}
if [ "$device" = cpu ]; then  # the rehearsal; fp16 is a GPU precision
  size=(--device cpu --num-train 48 --num-test 16 --batch-size 8 --bare-steps 1)
  data=(--num-images 64 --batch-size 8 --epochs 1 --num-workers 0)
  full=3 short=2 half=bf16 end=$((SECONDS + ${GPU_CHECK_SECONDS:-900}))
else
  size=(--device "$device" --num-train 12271 --num-test 3068 --batch-size 64)
  data=(--num-images 2048 --num-workers 8)
  full=50 short=4 half=fp16 end=$((SECONDS + ${GPU_CHECK_SECONDS:-330}))
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

missing() {  # the modules the project needs that do not import
  python3 -c 'import importlib, sys
for m in sys.argv[1:]:
    try: importlib.import_module(m)
    except Exception: print(m, end=" ")' torch torchvision numpy PIL pytest ftfy regex
}
need=$(missing)
if [ -n "$need" ] && [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$out/site" "$wheels"/*.whl \
    >"$out/wheels.log" 2>&1 \
    || for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$out/site"; done  # no pip
  export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
  need=$(missing)
fi
if [ -n "$need" ]; then
  echo "missing Python modules: $need(torch and torchvision must be the host's own; pass the" \
    "others as WHEEL_DIR, made as this script's header says)" | tee -a "$out/summary.txt"
  exit 1
fi

# a tiny torch.compile, in the background: can --compile build here?
timeout 120 python3 -c 'import sys, torch
try:
    torch.compile(lambda x: (x * 2).sin())(torch.ones(8, device=sys.argv[1]))
except Exception as e:
    sys.exit(type(e).__name__ + ": " + (str(e).strip().splitlines() or [""])[0])' "$device" \
  >"$out/compile_probe.log" 2>&1 &
probe=$!

step() {  # step NAME RESERVE COMMAND...: run it, leaving RESERVE seconds for the steps after
  local name=$1 start=$SECONDS left=$((end - SECONDS - $2))
  shift 2
  if [ "$left" -lt 20 ]; then
    echo "$name: skipped, out of time" | tee -a "$out/summary.txt"
    return
  fi
  timeout -k 10 "$left" "$@" >"$out/$name.log" 2>&1
  local rc=$? last
  last=$(tail -n 1 "$out/$name.log" | cut -c 1-300)
  [ $rc = 124 ] || [ $rc = 137 ] && last="timed out after $left s"
  echo "$name: exit $rc, $((SECONDS - start)) s; $last" | tee -a "$out/summary.txt"
}
loop() {  # loop NAME RESERVE EPOCHS FLAGS...: bench_loop.py, its wall time for $full epochs
  step "$1" "$2" python3 benchmarks/bench_loop.py "${size[@]}" --epochs "$3" --wall-epochs "$full" \
    --out "$out/$1.json" "${@:4}"
}

step tests 200 python3 -m pytest -q -rs tests/test_cuda.py
loop loop_resnet18 60 "$full"
loop "loop_resnet18_$half" 30 "$short" --amp "$half"
loop loop_swin_face 20 "$short" --backbone swin_t_face
if wait "$probe"; then
  loop loop_resnet18_compile 20 "$short" --train-flags=--compile
else
  error=$(grep -m 1 -i error "$out/compile_probe.log" || tail -n 1 "$out/compile_probe.log")
  echo "--compile: could not build: $error" | tee -a "$out/summary.txt"
fi
step data 0 python3 benchmarks/bench_data.py --device "$device" "${data[@]}" --out "$out/data.json"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  loop ddp_2gpu 0 "$short" --nproc 2
else
  echo "ddp_2gpu: skipped (fewer than 2 GPUs)" | tee -a "$out/summary.txt"
fi
cat "$out/summary.txt"
