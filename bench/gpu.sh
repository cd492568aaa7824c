#!/usr/bin/env bash
# The GPU path in one run: CUDA op parity and tests, generator throughput, the 256 px adaptation step,
# one Ray Train worker on the GPU, and the endpoint and synthesis benchmarks where they exist.
# Every section prints its tables and is time-boxed; a failed section is reported and the rest still
# run; a summary ends the run, whose exit status is 1 if any section failed. The whole run stays
# under 8 minutes on one H100.
#
#   bench/gpu.sh 2>&1 | tee gpu.log        # on a GPU machine
#   bench/gpu.sh --cpu-toy                 # the same sections at toy size on the CPU (CI); or FSG_GPU_TOY=1
#
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3). The GPU image
# has no boto3 or ray: the CUDA tests run without tests/conftest.py, and the Ray section is skipped
# unless `import ray` works.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

toy=${FSG_GPU_TOY:-0}
for arg in "$@"; do
    case $arg in
        --cpu-toy) toy=1 ;;
        *) echo "bench/gpu.sh: unknown argument '$arg' (only --cpu-toy)" >&2; exit 2 ;;
    esac
done
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled

if [[ $toy == 1 ]]; then
    # Toy mode checks that everything runs, not how fast: a loaded 2-core box gets 3x every limit.
    budget_s=1500 slack=3
    device=cpu
else
    budget_s=470 slack=1
    device=cuda
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "bench/gpu.sh: $PYTHON sees no CUDA device; run with --cpu-toy for the CPU check" >&2
        exit 2
    fi
fi

summary=()
failed=0

# section NAME LIMIT_S COMMAND...: runs COMMAND under a time limit (times the slack, capped by what
# is left of the budget) and records ok / failed / timed out with its duration.
section() {
    local name=$1 limit=$(($2 * slack))
    shift 2
    local left=$((budget_s - SECONDS))
    if ((left < 10)); then
        echo -e "\n=== $name: skipped, ${left}s left of the ${budget_s}s budget"
        summary+=("| $name | skipped: no time left | 0 |")
        return
    fi
    if ((limit > left)); then limit=$left; fi
    echo -e "\n=== $name (limit ${limit}s)"
    local start=$SECONDS rc=0 status
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out after ${limit}s"; failed=1 ;;
        *) status="failed (exit $rc)"; failed=1 ;;
    esac
    echo "=== $name: $status in $((SECONDS - start))s"
    summary+=("| $name | $status | $((SECONDS - start)) |")
}

skip() {
    echo -e "\n=== $1: skipped ($2)"
    summary+=("| $1 | skipped: $2 | 0 |")
}

date -u '+%Y-%m-%d %H:%M UTC'
if [[ $device == cuda ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
section "environment" 30 "$PYTHON" -c "import os, torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device', '|', os.cpu_count(), 'CPUs,', torch.get_num_threads(), 'torch threads')"

if [[ $toy == 1 ]]; then
    section "CUDA op parity" 120 "$PYTHON" bench/gpu_parity.py --toy
else
    section "CUDA op parity" 150 "$PYTHON" bench/gpu_parity.py
fi

# Without conftest.py: it imports boto3 for the S3 fixtures, which test_ops.py does not use.
section "CUDA tests" 90 "$PYTHON" -m pytest --noconftest -q -m cuda -p no:cacheprovider tests/test_ops.py

if [[ $toy == 1 ]]; then
    section "generator throughput" 120 "$PYTHON" bench/gen_forward.py --device cpu --configs toy-64px \
        --batches 1 --min-time 0.05 --variants fp32,fp32+ref,bf16+channels_last --threads 1
else
    section "generator throughput" 120 "$PYTHON" bench/gen_forward.py --device cuda --configs 256px-cm2 \
        --batches 1,2,4,8,16,32,64 --min-time 0.2 \
        --variants fp32,fp32+ref,bf16,fp16,bf16+channels_last,bf16+channels_last+compile --compile-batches 64
fi

if [[ $toy == 1 ]]; then
    section "adaptation step" 120 "$PYTHON" bench/gpu_step.py --device cpu --config toy-64px \
        --warmup 0 --steps 5 --variants fp32/ref,bf16/ref --threads 1
else
    section "adaptation step" 120 "$PYTHON" bench/gpu_step.py --device cuda --config 256px-cm2
fi

if ! "$PYTHON" -c "import ray.train" 2>/dev/null; then
    skip "Ray Train worker" "ray is not installed for $PYTHON"
elif [[ $toy == 1 ]]; then
    section "Ray Train worker" 180 "$PYTHON" bench/gpu_ray.py --device cpu --config toy-64px
else
    section "Ray Train worker" 120 "$PYTHON" bench/gpu_ray.py --device cuda --config 256px-cm2
fi

# Other engineers' benchmarks, run when present. Their flags are assumptions made while those scripts
# were being written (serve_load.py's --gpus-per-replica existed; synthesize.py's --gpus-per-worker
# did not yet): adjust here if they differ.
SERVE_GPU_ARGS=(--gpus-per-replica 1)
SERVE_TOY_ARGS=(--clients 1 --images-per-request 1 --requests 8)
SYNTH_GPU_ARGS=(--gpus-per-worker 1)
SYNTH_TOY_ARGS=(--count 16 --workers 1)
for bench in serve_load synthesize; do
    if [[ $bench == serve_load ]]; then gpu_args=("${SERVE_GPU_ARGS[@]}") toy_args=("${SERVE_TOY_ARGS[@]}")
    else gpu_args=("${SYNTH_GPU_ARGS[@]}") toy_args=("${SYNTH_TOY_ARGS[@]}"); fi
    if [[ ! -e bench/$bench.py ]]; then
        skip "bench/$bench.py" "not in this checkout"
    elif [[ $toy == 1 ]]; then
        section "bench/$bench.py" 120 "$PYTHON" bench/$bench.py "${toy_args[@]}"
    else
        section "bench/$bench.py" 60 "$PYTHON" bench/$bench.py "${gpu_args[@]}"
    fi
done

echo -e "\n=== summary ($([[ $toy == 1 ]] && echo "CPU toy mode" || echo "GPU"); ${SECONDS}s in all)"
echo "| section | result | seconds |"
echo "|---|---|---:|"
printf '%s\n' "${summary[@]}"
exit $failed
