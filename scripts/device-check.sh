#!/usr/bin/env bash
# Device check, run ON the GPU machine (no Rust toolchain, no internet) from a pack made here by
# scripts/pack-device.sh. Within a time budget (default 8 minutes) it runs, most important first:
#   1. the GPU tests (every test executable of the pack, its #[ignore]d tests, each in its own process:
#      for tests/cuda_gpu the runtime self-tests, conformance suite, every op and whole training
#      steps against the CPU backend, TF32, NCCL collectives of one rank);
#   2. `ltrain bench` on the GPU (random data, three-expert ResNet-32, batch 128): pre-augmented
#      input with TF32 on and off, then device-side augmentation and host-staged upload (TF32 on),
#      each as a CUDA graph, pre-augmented and device-augment also eager (--cuda-graphs off), and
#      the device-augment slowdown against pre-augmented (the goal: within 10%);
#   3. the PyTorch peer (peers/torch_resnet32_3e.py), eager fp32 and bf16 autocast, for comparison;
#   4. a short real training run on CIFAR-10-LT (rho = 100) with a stage switch;
#   5. compute-sanitizer memcheck and racecheck on the GPU tests (Firecracker machines; gVisor ones
#      refuse the device, which the summary then shows);
#   6. the CUDA groups of the criterion benches.
# Every step has its own time limit and is skipped when the budget is nearly spent. All output goes to
# one log file in LOG_DIR; the training metrics are copied there; a short table is printed last (and
# saved as summary.md).
#
# Usage: bash device-check.sh [PACK_DIR] [LOG_DIR] [BUDGET_SECONDS]
#        (defaults: the script's folder, $OUT or ./device-logs, 480)
set -uo pipefail

pack="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")}" && pwd)"
log_dir="${2:-${OUT:-./device-logs}}"
budget="${3:-480}"
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"
log="$log_dir/device-check.log"
summary="$log_dir/summary.md"
work="$(mktemp -d /tmp/ltrain-device.XXXXXX)"
start=$(date +%s)
rows=()
: > "$log"

elapsed() { echo $(( $(date +%s) - start )); }
note() { echo "[$(elapsed)s] $*" | tee -a "$log" >&2; }

# step NAME LIMIT_SECONDS CMD...: runs CMD with a time limit (capped by what is left of the budget),
# appends its output to the log and to $work/NAME.out; sets $step_status.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( budget - $(elapsed) - 15 ))
    if (( left < 20 )); then
        step_status="skipped (budget)"
        step_seconds="-"
        note "skip $name: budget spent"
        return
    fi
    (( limit > left )) && limit=$left
    note "run  $name (limit ${limit}s): $*"
    echo "=================== $name: $* ===================" >> "$log"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$work/$name.out" 2>&1
    local rc=$?
    cat "$work/$name.out" >> "$log"
    step_seconds=$(( $(date +%s) - t0 ))
    case $rc in
        0) step_status="ok" ;;
        124 | 137) step_status="TIMEOUT (${limit}s)" ;;
        *) step_status="FAILED (exit $rc)" ;;
    esac
    note "done $name: $step_status in ${step_seconds}s"
}

row() { rows+=("| $1 | $2 | $3 | $4 |"); }

# ---- environment -------------------------------------------------------------------------------
{
    echo "pack: $pack"
    cat "$pack/MANIFEST" 2>/dev/null | head -5
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 || true
    echo "kernel: $(uname -r)"
} >> "$log" 2>&1

# cuBLAS: 13 preferred, else 12 (ltrain loads either), from the CUDA toolkit or wherever the
# PyTorch wheels put it (nvidia-cublas: site-packages/nvidia/cu13/lib, nvidia/cublas/lib, ...).
cublas=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    roots += glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + [os.path.join(sp, "torch", "lib")]
for major in ("13", "12"):
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "libcublas.so." + major + "*")))
        if hits:
            print(hits[0])
            raise SystemExit
EOF
)
if [ -z "$cublas" ]; then
    cublas=$(find /usr /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
    [ -z "$cublas" ] && cublas=$(find /usr /opt -name 'libcublas.so.12*' 2>/dev/null | head -1)
fi
if [ -n "$cublas" ]; then
    export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "cuBLAS: using $cublas"
    row "cuBLAS found" "ok" "-" "$cublas"
else
    note "cuBLAS: no libcublas.so.13 or .12 found; the GPU tests will say so"
    row "cuBLAS found" "NOT FOUND" "-" "no libcublas.so.13 or .so.12 under the toolkit or site-packages"
fi
# NCCL (data-parallel ranks): the wheel nvidia-nccl-cu13 ships libnccl.so.2, cudarc opens libnccl.so:
# a link to it in a folder of our own, put on LD_LIBRARY_PATH.
nccl=$(python3 -c "import glob, site; print(next(iter(sorted(h for sp in site.getsitepackages() + [site.getusersitepackages()] for h in glob.glob(sp + '/nvidia/*/lib/libnccl.so.2'))), ''))" 2>/dev/null)
[ -z "$nccl" ] && nccl=$(find /usr /opt -name 'libnccl.so.2*' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then
    mkdir -p "$work/nccl" && ln -sf "$nccl" "$work/nccl/libnccl.so"
    export LD_LIBRARY_PATH="$work/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    row "NCCL found" "ok" "-" "$nccl (linked as libnccl.so)"
else
    row "NCCL found" "NOT FOUND" "-" "no libnccl.so.2: the NCCL tests will say so"
fi
note "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

exe="$work/exe"
mkdir -p "$exe"
tar -C "$exe" -xJf "$pack/executables.tar.xz" 2>/dev/null ||
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
        "$pack/executables.tar.xz" "$exe" ||
    { note "cannot unpack $pack/executables.tar.xz"; exit 1; }
ltrain="$exe/bin/ltrain"
gpu_tests="$exe/tests/cuda_gpu"

# ---- 1. GPU tests --------------------------------------------------------------------------------
# Each test in its own process: a fault that poisons the CUDA context fails that test only.
for t in "$exe"/tests/*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    passed=0 failed=() t_start=$(date +%s)
    for test_name in $("$t" --list --ignored --format terse 2>/dev/null | sed -n 's/: test$//p'); do
        step "test_${name}__$test_name" 60 "$t" --ignored --exact "$test_name" --test-threads=1
        if [ "$step_status" = ok ]; then
            passed=$((passed + 1))
        else
            failed+=("$test_name ($step_status)")
        fi
    done
    list=$(IFS=,; echo "${failed[*]:-}" | cut -c1-300)
    status=ok
    [ ${#failed[@]} -gt 0 ] && status="FAILED ${#failed[@]}"
    row "GPU tests: $name --ignored, one process each" "$status" "$(( $(date +%s) - t_start ))s" "$passed passed${list:+; failed: $list}"
done

# ---- 2. ltrain bench -----------------------------------------------------------------------------
# ms/step of a bench output file ("(12.34 ms/step over 50 steps)"); empty when there is none.
ms_per_step() { grep -h "samples/s" "$1" 2>/dev/null | tail -1 | sed -n 's/.*(\([0-9.]*\) ms\/step.*/\1/p'; }
# input:precision:graphs (CUDA graphs are on by default on a GPU; the "off" runs are the eager step).
for run in pre-augmented:tf32:on pre-augmented:tf32:off pre-augmented:strict:on \
    device-augment:tf32:on device-augment:tf32:off host-upload:tf32:on; do
    IFS=: read -r input tf graphs <<< "$run"
    flag=()
    [ "$tf" = strict ] && flag=(--no-tf32)
    name="bench_${input}_$tf"
    [ "$graphs" = off ] && name="${name}_eager"
    step "$name" 60 "$ltrain" bench --device cuda --batch-size 128 --steps 50 --warmup 5 \
        --input "$input" --cuda-graphs "$graphs" "${flag[@]}"
    line=$(grep -h "samples/s" "$work/$name.out" | tail -1 | sed 's/.*: //')
    row "ltrain bench, ResNet-32 x3, batch 128, $input, $tf, graphs $graphs" "$step_status" "${step_seconds}s" "${line:-no throughput line}"
done
pre_ms=$(ms_per_step "$work/bench_pre-augmented_tf32.out")
aug_ms=$(ms_per_step "$work/bench_device-augment_tf32.out")
if [ -n "$pre_ms" ] && [ -n "$aug_ms" ]; then
    slowdown=$(awk -v pre="$pre_ms" -v aug="$aug_ms" 'BEGIN {
        pct = (aug - pre) / pre * 100
        printf "%+.1f%% (%s vs %s ms/step): %s", pct, aug, pre, (pct <= 10 ? "within 10%" : "OVER 10%")
    }')
    row "device-augment step vs pre-augmented, tf32" "ok" "-" "$slowdown"
else
    row "device-augment step vs pre-augmented, tf32" "no figures" "-" "pre ${pre_ms:-?} ms, device-augment ${aug_ms:-?} ms"
fi

# ---- 3. PyTorch peer -----------------------------------------------------------------------------
peer="$pack/peers/torch_resnet32_3e.py"
if [ -f "$peer" ]; then
    for mode in fp32 amp; do
        flag=()
        [ "$mode" = amp ] && flag=(--amp)
        step "torch_$mode" 90 env PYTHONUNBUFFERED=1 python3 "$peer" --device cuda --steps 100 "${flag[@]}"
        sps=$(grep -ho "samples_per_second=[0-9.]*" "$work/torch_$mode.out" | tail -1 | cut -d= -f2)
        row "PyTorch peer, eager $mode, batch 128" "$step_status" "${step_seconds}s" "${sps:+$sps samples/s}"
    done
else
    row "PyTorch peer" "skipped (not in pack)" "-" ""
fi

# ---- 4. short real training run ------------------------------------------------------------------
data="$work/data"
mkdir -p "$data"
have_data=1
for f in train_lt_r100.bin test.bin; do
    if [ -f "$pack/data/$f.xz" ]; then
        xz -dc "$pack/data/$f.xz" > "$data/$f" 2>/dev/null ||
            python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$pack/data/$f.xz" "$data/$f" ||
            have_data=0
    else
        have_data=0
    fi
done
if [ "$have_data" = 1 ]; then
    run_dir="$work/run"
    step train 150 "$ltrain" train --dataset cifar10-lt --train-file "$data/train_lt_r100.bin" \
        --test-file "$data/test.bin" --imbalance 100 --device cuda --epochs 3 --stage2-epoch 2 \
        --warmup-epochs 0 --milestones 2 --batch-size 128 --out "$run_dir" --quiet
    cp "$run_dir/metrics.jsonl" "$log_dir/train-metrics.jsonl" 2>/dev/null
    last=$(tail -1 "$run_dir/metrics.jsonl" 2>/dev/null | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("epoch %s, stage %s, train loss %.3f, top-1 %s" % (r.get("epoch"), r.get("stage"), r.get("train_loss", float("nan")), r.get("top1")))
' 2>/dev/null)
    row "train CIFAR-10-LT r100, 3 epochs (SLA in the last)" "$step_status" "${step_seconds}s" "${last:-no metrics}"
else
    row "train CIFAR-10-LT" "skipped (no data in pack)" "-" ""
fi

# ---- 5. compute-sanitizer --------------------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
    # memcheck on every GPU test; racecheck on those whose kernels share memory between threads.
    step memcheck 120 "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$gpu_tests" --ignored --test-threads=1
    summary_line=$(grep -h "ERROR SUMMARY" "$work/memcheck.out" | tail -1)
    row "compute-sanitizer memcheck (GPU tests)" "$step_status" "${step_seconds}s" "${summary_line:-$(tail -1 "$work/memcheck.out" | cut -c1-100)}"
    step racecheck 120 "$sanitizer" --tool racecheck --error-exitcode 99 --print-limit 20 \
        "$gpu_tests" --ignored --test-threads=1 reduction shuffle ballot histogram conformance \
        fused_loss batch_norm linear_and_rows cosine
    summary_line=$(grep -h "RACECHECK SUMMARY\|ERROR SUMMARY" "$work/racecheck.out" | tail -1)
    row "compute-sanitizer racecheck (shared-memory kernels)" "$step_status" "${step_seconds}s" "${summary_line:-$(tail -1 "$work/racecheck.out" | cut -c1-100)}"
else
    row "compute-sanitizer" "skipped (not found)" "-" ""
fi

# ---- 6. criterion benches (their CUDA groups) ----------------------------------------------------
for b in "$exe"/benches/*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    step "bench_$name" 60 "$b" --bench cuda --warm-up-time 1 --measurement-time 3
    thrpt=$(grep -h "thrpt:" "$work/bench_$name.out" | head -3 | sed 's/ *thrpt: *//' | paste -sd';' -)
    row "criterion bench $name (cuda groups)" "$step_status" "${step_seconds}s" "${thrpt:-see log}"
done

# ---- summary ---------------------------------------------------------------------------------------
{
    echo "## device check ($(elapsed)s of ${budget}s)"
    echo
    echo "| step | status | time | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} > "$summary"
echo >> "$log"
cat "$summary" >> "$log"
echo
cat "$summary"
rm -rf "$work"
