#!/usr/bin/env bash
# Every GPU row of the benchmarks in one short run, for a lent GPU machine (H100/H200).
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device tool's folder) or ./gpu_results
#   QUICK=1 bash benchmarks/gpu_check.sh    # smoke mode: tiny sizes (works on a CPU-only machine)
#
# Uses the machine's own python3 with PyTorch (no install: pydensecrf, which only the CPU parts
# need, is not used). Sized to end well inside one 10-minute command (not yet run on a GPU:
# no task so far was lent one). Afterwards, on any machine:
#   python benchmarks/estimate_voc.py --gpu-times <results>/gpu_times.json --cores 16
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-gpu_results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
status=0
run() {  # run NAME CMD...: output to the terminal and to $out/NAME.txt; go on after a failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt" || { echo "== $name FAILED"; status=1; }
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$out/machine.txt"
# CAM inference: one pass at a time vs make-cam's form, fp32 vs bf16 (4 VOC-size images)
run cam_inference "$py" benchmarks/bench_cam_inference.py --images 4 "${quick[@]}"
# training step: ResNet-38, crop 448, batch 8, fp32 vs bf16 autocast vs + channels-last (+ compile)
run training "$py" benchmarks/bench_training.py --skip-cpu --compile "${quick[@]}"
# the GPU terms of the VOC estimate
if [ "${QUICK:-0}" = 1 ]; then
  echo "== gpu_times: skipped in QUICK mode"
else
  run gpu_times "$py" benchmarks/estimate_voc.py --gpu-only "$out/gpu_times.json"
fi
# the CUDA-only tests
run tests "$py" -m pytest -q -p no:cacheprovider tests/test_random_walk.py tests/test_training.py -k "cuda or channels_last"
exit $status
