#!/usr/bin/env bash
# Every GPU check of the input-pipeline and step-speed work, in one run (issue 22).
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: bf16-mixed, ResNet-50 at 224
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # the same steps, tiny, on CPU (a dry run)
#
# Writes every table to ${OUT:-outputs/gpu_check}/ (one log per step) and prints them:
#   1. the config smoke tests on the device (tests/test_configs.py with
#      CONTRASEG_TEST_ACCELERATOR / CONTRASEG_TEST_PRECISION);
#   2. benchmarks/pipeline.py: worker cost, device-part cost, fit end to end vs device-resident;
#   3. benchmarks/throughput.py: SimCLR ResNet-50 at 224 (Lightning vs a plain loop);
#   4. benchmarks/losses.py: NT-Xent and SupCon on the device;
#   5. the compile test with the real (inductor) backend;
#   6. the textured scenes rendered on the GPU equal the CPU ones; benchmarks/scenes.py on it.
# Missing packages on a bare GPU machine (segmentation-models-pytorch, jsonargparse, ...) travel
# as wheels: see the device README; PYTHONPATH must already point at them.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUTDIR=${OUT:-outputs/gpu_check}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
status=0
step() {  # name, command...: run, keep the log, remember a failure
    local name=$1; shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$OUTDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc $rc, $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUTDIR/gpu.log"
    step configs env CONTRASEG_TEST_ACCELERATOR=gpu CONTRASEG_TEST_PRECISION=bf16-mixed \
        "$PY" -m pytest -q -x -n 4 tests/test_configs.py -p no:cacheprovider
    step pipeline "$PY" benchmarks/pipeline.py --device cuda --precision bf16-mixed \
        --encoder resnet50 --size 224 --batch-size 256 --workers 15 --images 4096 \
        --samples 128 --steps 10 --warmup 3 --rounds 2
    step throughput "$PY" benchmarks/throughput.py --device cuda --precision bf16-mixed \
        --encoder resnet50 --size 224 --batch-size 256 --steps 20 --warmup 5 --rounds 2
    step losses "$PY" benchmarks/losses.py --device cuda --batch-sizes 256 1024 2048 4096
    step supcon "$PY" benchmarks/losses.py --device cuda --loss supcon --batch-sizes 1024 4096
    step compile env CONTRASEG_COMPILE_BACKEND=inductor \
        "$PY" -m pytest -q tests/test_step_speed.py -p no:cacheprovider
    step scenes_equal "$PY" -m pytest -q tests/test_textured_scenes.py -k "device or fits" \
        -p no:cacheprovider
    step scenes "$PY" benchmarks/scenes.py --device cuda --sizes 96 --batch 256 --rounds 3
else  # a dry run of every step on CPU, tiny
    step configs env CONTRASEG_TEST_ACCELERATOR=cpu CONTRASEG_TEST_PRECISION=32-true \
        "$PY" -m pytest -q -x tests/test_configs.py -k "quickstart" -p no:cacheprovider
    step pipeline "$PY" benchmarks/pipeline.py --rounds 1 --steps 2 --warmup 1 --images 48 \
        --batch-size 8 --samples 8 --workers 0 --size 64
    step throughput "$PY" benchmarks/throughput.py --steps 2 --warmup 1 --rounds 1 \
        --batch-size 8
    step losses "$PY" benchmarks/losses.py --batch-sizes 64 --repeats 2 --warmup 1
    step supcon "$PY" benchmarks/losses.py --loss supcon --batch-sizes 64 --repeats 2 --warmup 1
    step compile "$PY" -m pytest -q tests/test_step_speed.py -p no:cacheprovider
    step scenes_equal "$PY" -m pytest -q tests/test_textured_scenes.py -k "device or fits" \
        -p no:cacheprovider
    step scenes "$PY" benchmarks/scenes.py --sizes 48 --batch 4 --rounds 1
fi
echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo a step failed), logs in $OUTDIR"
exit $status
