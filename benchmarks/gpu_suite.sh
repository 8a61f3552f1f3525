#!/usr/bin/env bash
# Every GPU figure the benchmarks README asks for, in three calls of the device tool (each under its
# 10-minute limit). Results land in $OUT (the device tool's folder; default ./gpu-results) as one
# <name>.jsonl (the benchmark's JSON lines) and <name>.log (its stderr) per measurement; a failing
# measurement is recorded (rc in summary.txt) and the next one runs.
#
#   benchmarks/gpu_suite.sh step     # train_step fp32/bf16, profiles, bf16-vs-fp32 quality (~5 min)
#   benchmarks/gpu_suite.sh compile  # train_step with torch.compile, default and CUDA graphs (~6 min)
#   benchmarks/gpu_suite.sh ray      # training loop from the cache, in process and through Ray (~6 min)
#
# The device's python3 has torch and torchvision but not the rest of our imports (pydantic,
# safetensors, tqdm; for "ray" also Ray, boto3 and pyyaml). Build the bundle once here, then carry
# .devwheels in every call (the script sources .devwheels/activate.sh itself):
#   DEVICE_EXTRA="safetensors tqdm boto3 botocore s3transfer jmespath python-dateutil six urllib3 pyyaml" \
#     ../shared/tools/device-bundle.sh
set -u
part=${1:?usage: gpu_suite.sh step|compile|ray}
out=${OUT:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -f .devwheels/activate.sh ]; then
  # shellcheck disable=SC1091
  source .devwheels/activate.sh
elif [ "$part" = ray ]; then
  echo "gpu_suite.sh ray: .devwheels/activate.sh is missing; build the bundle (see the header)" >&2
  exit 2
fi

measure() {  # measure NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.jsonl" 2>"$out/$name.log"
  local rc=$?
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - start))" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/gpu.csv" 2>&1
"$py" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())' >"$out/torch.txt" 2>&1

case "$part" in
step)
  measure step_fp32 120 "$py" benchmarks/train_step.py --size 256 --batch 1 4 8 --precision fp32
  measure step_bf16 150 "$py" benchmarks/train_step.py --size 256 --batch 1 4 8 16 --precision bf16
  # instance norm reshapes its input to NCHW-contiguous: does channels_last (the default on CUDA) pay?
  measure step_bf16_nchw 120 "$py" benchmarks/train_step.py --size 256 --batch 1 8 --precision bf16 --no-channels-last
  measure profile_bf16_b8 90 "$py" benchmarks/profile_step.py --size 256 --batch 8 --precision bf16 --steps 5
  measure profile_bf16_b1 90 "$py" benchmarks/profile_step.py --size 256 --batch 1 --precision bf16 --steps 10
  measure quality 240 "$py" benchmarks/precision_quality.py --size 128 --images 300 --epochs 12 --batch 4 \
    --precision fp32 bf16
  ;;
compile)
  measure step_bf16_compile 280 "$py" benchmarks/train_step.py --size 256 --batch 1 8 --precision bf16 --compile
  measure step_bf16_cudagraphs 280 "$py" benchmarks/train_step.py --size 256 --batch 1 8 --precision bf16 \
    --compile --compile-mode reduce-overhead
  ;;
ray)
  # one synthetic dataset for both (writing 800 images at 286 px takes ~40 s)
  measure loop_b8_ray 300 "$py" benchmarks/train_loop.py --size 256 --batch 8 --images 400 --epochs 4 \
    --loader-workers 6 --workdir /tmp/cyclegan-loop --ray
  measure loop_b1_ray 240 "$py" benchmarks/train_loop.py --size 256 --batch 1 --images 400 --epochs 3 \
    --loader-workers 2 --workdir /tmp/cyclegan-loop --ray
  ;;
*)
  echo "unknown part $part (step, compile or ray)" >&2
  exit 2
  ;;
esac
cat "$out/summary.txt"
