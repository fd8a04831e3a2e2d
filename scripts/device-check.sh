#!/usr/bin/env bash
# Device check, run ON the GPU machine (no Rust toolchain, no internet) from a pack made here by
# scripts/pack-device.sh. It first names the GPU and its driver (nvidia-smi), glibc and each CUDA
# library found with its version (`ltrain device`; the script's own search when that fails), then runs
# two tiers of steps within a time budget (default 300 s), every step with its own time limit:
#   SMOKE, first and whole (its limits sum to at most 240 s):
#     1. the runtime self-tests of tests/cuda_gpu (the backend starts, barrier-dependent reduction,
#        warp shuffle, ballot, atomic histogram);
#     2. one convolution and one batch norm against the CPU backend, one whole training step;
#     3. `ltrain bench` (three-expert ResNet-32, batch 128, pre-augmented, TF32) with CUDA graphs on
#        and off, beside the PyTorch peer (peers/torch_resnet32_3e.py), eager fp32 and bf16 autocast.
#   FULL, in what the budget has left, most telling first (what does not fit is skipped and listed):
#     4. the other GPU tests (tests/cuda_gpu, tests/device_augment, and any test a binary of the pack
#        has beyond the plan);
#     5. the other bench variants (strict fp32; device-side augmentation, graphs on and off; host
#        upload) and the device-augment slowdown against pre-augmented (the goal: within 10%);
#     6. a short real training run on CIFAR-10-LT (rho = 100) with a stage switch;
#     7. compute-sanitizer memcheck, racecheck and synccheck, only on the runtime self-tests and on one
#        kernel of each family (kernels/*.cu), each run around one named test (--exact), bounded by
#        --kernel-name and --launch-count; racecheck only where that kernel shares memory, synccheck
#        only where it synchronises threads (Firecracker machines; gVisor ones refuse the device);
#     8. the CUDA groups of the criterion benches.
# Each GPU test runs in its own process (a fault that poisons the CUDA context fails that test only);
# a test that the binary does not have ("0 passed") is a failure, not a pass. The GPU tests, and the
# sanitizer runs (which run them), stop after a failed runtime self-test or after two timeouts in a
# row. A step's limit is capped by what is left of the budget; a step is skipped when too little is
# left. Within the default budget the full tier gets what the smoke tier leaves (at worst 36 s): give
# a larger BUDGET_SECONDS to run more of it.
# Output: LOG_DIR/device-check.log (everything, each step's output included), LOG_DIR/summary.md (the
# table, printed last too) and LOG_DIR/train-metrics.jsonl. The log and the summary begin with the
# GPU's name (nvidia-smi) and the date: the machine is an H100 unless an H200 was asked for.
#
# Usage: bash device-check.sh [PACK_DIR] [LOG_DIR] [BUDGET_SECONDS]
#        bash device-check.sh --dry-run [PACK_DIR] [LOG_DIR] [BUDGET_SECONDS]
#        (defaults: the script's folder, $OUT or ./device-logs, 300)
# --dry-run needs no GPU and no pack, runs nothing and writes nothing: it prints the plan, one
# tab-separated line a step,
#   TIER  STEP  LIMIT_S  WORST_S  COMMAND
# where LIMIT_S is the step's own limit and WORST_S what it gets if every step before it runs to its
# limit (0: skipped then), and the header, reserve, total and budget lines (tests/device_check.rs
# reads them).
set -uo pipefail

dry_run=0
if [ "${1:-}" = --dry-run ]; then
    dry_run=1
    shift
fi
pack_arg="${1:-$(dirname "${BASH_SOURCE[0]}")}"
log_dir="${2:-${OUT:-./device-logs}}"
budget="${3:-300}"
if ! [[ $budget =~ ^[0-9]+$ ]]; then
    echo "BUDGET_SECONDS is a whole number of seconds, not '$budget'" >&2
    exit 2
fi
smoke_cap=240       # the smoke tier's limits sum to at most this
setup_reserve=25    # unpacking, nvidia-smi, `ltrain device` (its 10 s limit): the plan's worst case
summary_reserve=15  # kept free at the end: the summary, and the grace of a step killed at its limit
kill_grace=5        # a step still running this long after SIGTERM is killed

if ((dry_run)); then
    pack="$(cd "$pack_arg" 2>/dev/null && pwd)" || pack="$pack_arg"
    work=/tmp/ltrain-device.XXXXXX # not created: the commands below only name it
else
    pack="$(cd "$pack_arg" && pwd)" || exit 1
    mkdir -p "$log_dir" || exit 1
    log_dir="$(cd "$log_dir" && pwd)"
    work="$(mktemp -d /tmp/ltrain-device.XXXXXX)"
fi
log="$log_dir/device-check.log"
summary="$log_dir/summary.md"
exe="$work/exe"
ltrain="$exe/bin/ltrain"
start=$(date +%s)
clock=$setup_reserve # the dry run's clock: every step runs to its limit
rows=()
declare -A limit_total=([smoke]=0 [full]=0) worst_total=([smoke]=0 [full]=0)

# ---- the plan ------------------------------------------------------------------------------------
# The runtime self-tests (tests/cuda_gpu, TEST LIMIT), before anything else.
self_tests=(
    "the_gpu_backend_starts_and_describes_itself 20"
    "barrier_dependent_tree_reduction_is_exact 8"
    "warp_shuffle_reduction_matches_naive_sums 8"
    "ballot_collects_every_lane 8"
    "atomic_histogram_from_many_blocks 8"
)
# One convolution, one batch norm and one whole training step against the CPU backend.
smoke_tests=(
    "convolutions_match_the_cpu 15"
    "tensor_core_convolutions_match_the_cpu 12"
    "batch_norm_matches_the_cpu 12"
    "training_steps_match_the_cpu 20"
)
# The other GPU tests (BINARY TEST LIMIT), most telling first. Tests a binary has beyond these (from
# its --list) run after them; tests/device_check.rs checks that this plan names every #[ignore]d test.
full_tests=(
    "cuda_gpu gpu_backend_passes_the_conformance_suite 30"
    "cuda_gpu tensor_core_fragments_follow_the_ptx_layouts 10"
    "cuda_gpu tensor_core_convolutions_pass_the_conformance_checks 20"
    "cuda_gpu tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu 20"
    "cuda_gpu tensor_core_convolutions_keep_nans 10"
    "cuda_gpu replayed_tensor_core_bench_steps_equal_eager_steps 20"
    "cuda_gpu a_tensor_core_run_learns_the_synthetic_set 40"
    "cuda_gpu elementwise_ops_match_the_cpu 10"
    "cuda_gpu convolutions_over_many_tiles_and_splits_match_the_cpu 30"
    "cuda_gpu pooling_and_shortcut_match_the_cpu 10"
    "cuda_gpu linear_and_rows_match_the_cpu 15"
    "cuda_gpu fused_loss_matches_the_cpu 10"
    "cuda_gpu cosine_cosmax_mixup_and_sgd_match_the_cpu 10"
    "cuda_gpu out_of_range_indices_are_errors_like_on_the_cpu 10"
    "device_augment gpu_matches_cpu_per_op 15"
    "device_augment gpu_matches_cpu_per_level 30"
    "cuda_gpu tf32_convolutions_stay_close_to_the_cpu 15"
    "cuda_gpu graph_replays_equal_eager_runs 15"
    "cuda_gpu replayed_bench_steps_equal_eager_steps 20"
    "cuda_gpu capture_rule_violations_are_errors 10"
    "cuda_gpu batch_loader_views_match_the_source 15"
    "cuda_gpu cublas_follows_the_convention_the_emulator_implements 15"
    "cuda_gpu launches_outside_the_h200_limits_are_errors 10"
    "cuda_gpu a_large_grid_launches 10"
    "cuda_gpu nccl::collectives_of_one_rank_keep_the_values 15"
    "cuda_gpu nccl::work_after_the_wait_reads_the_reduced_buffer 15"
    "cuda_gpu nccl::misuse_is_an_error 15"
)
# compute-sanitizer runs (TOOL BINARY TEST FILTER LAUNCH_COUNT LIMIT): the runtime self-tests' kernels,
# then one kernel of each family (kernels/FAMILY.cu) around a test that launches it. FILTER is
# compute-sanitizer's documented --kernel-name key=value form: kne= the exact (extern "C", so
# unmangled) name, kns= a substring (the conv kernels carry their tile size: _m16, _m32, ...).
# memcheck everywhere; racecheck where the kernel shares memory (tiles, block_sum); synccheck where it
# synchronises (__syncthreads, warp shuffles, ballots).
sanitizer_runs=(
    "memcheck cuda_gpu barrier_dependent_tree_reduction_is_exact kne=selftest_block_tree_sum 2 20"
    "racecheck cuda_gpu barrier_dependent_tree_reduction_is_exact kne=selftest_block_tree_sum 2 20"
    "synccheck cuda_gpu barrier_dependent_tree_reduction_is_exact kne=selftest_block_tree_sum 2 20"
    "memcheck cuda_gpu warp_shuffle_reduction_matches_naive_sums kne=selftest_warp_sum 2 20"
    "synccheck cuda_gpu warp_shuffle_reduction_matches_naive_sums kne=selftest_warp_sum 2 20"
    "memcheck cuda_gpu ballot_collects_every_lane kne=selftest_ballot 2 20"
    "synccheck cuda_gpu ballot_collects_every_lane kne=selftest_ballot 2 20"
    "memcheck cuda_gpu atomic_histogram_from_many_blocks kne=selftest_histogram 2 20"
    "memcheck cuda_gpu convolutions_match_the_cpu kns=conv2d_backward_weight_m 2 20"
    "memcheck cuda_gpu tensor_core_convolutions_match_the_cpu kns=conv2d_mma_backward_data 2 20"
    "racecheck cuda_gpu tensor_core_convolutions_match_the_cpu kns=conv2d_mma_forward 2 30"
    "racecheck cuda_gpu tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu kns=_k3s1_rows_ 2 30"
    "racecheck cuda_gpu tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu kns=conv2d_mma_backward_weight_k3s1_halo 2 30"
    "memcheck cuda_gpu tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu kns=conv2d_mma_backward_weight_k3s2_halo 2 20"
    "memcheck cuda_gpu batch_norm_matches_the_cpu kne=batch_norm_stats 2 20"
    "memcheck cuda_gpu pooling_and_shortcut_match_the_cpu kne=global_avg_pool_forward 2 20"
    "memcheck cuda_gpu fused_loss_matches_the_cpu kne=fused_loss_rows 2 20"
    "memcheck cuda_gpu cosine_cosmax_mixup_and_sgd_match_the_cpu kne=mixup 2 20"
    "memcheck cuda_gpu cosine_cosmax_mixup_and_sgd_match_the_cpu kne=sgd_step 2 20"
    "memcheck cuda_gpu elementwise_ops_match_the_cpu kne=reduce_sum 2 20"
    "memcheck cuda_gpu cosine_cosmax_mixup_and_sgd_match_the_cpu kne=row_cosine 2 20"
    "memcheck device_augment gpu_matches_cpu_per_op kne=augment_batch 2 20"
    "memcheck cuda_gpu linear_and_rows_match_the_cpu kne=gather_rows 2 20"
    "racecheck cuda_gpu convolutions_match_the_cpu kns=conv2d_backward_weight_m 2 20"
    "racecheck cuda_gpu batch_norm_matches_the_cpu kne=batch_norm_stats 2 20"
    "racecheck cuda_gpu fused_loss_matches_the_cpu kne=fused_loss_rows 2 20"
    "racecheck cuda_gpu elementwise_ops_match_the_cpu kne=reduce_sum 2 20"
    "racecheck device_augment gpu_matches_cpu_per_op kne=augment_batch 2 20"
    "synccheck cuda_gpu convolutions_match_the_cpu kns=conv2d_backward_weight_m 2 20"
    "synccheck cuda_gpu batch_norm_matches_the_cpu kne=batch_norm_stats 2 20"
    "synccheck cuda_gpu pooling_and_shortcut_match_the_cpu kne=global_avg_pool_forward 2 20"
    "synccheck cuda_gpu fused_loss_matches_the_cpu kne=fused_loss_rows 2 20"
    "synccheck cuda_gpu elementwise_ops_match_the_cpu kne=reduce_sum 2 20"
    "synccheck cuda_gpu cosine_cosmax_mixup_and_sgd_match_the_cpu kne=row_cosine 2 20"
    "synccheck device_augment gpu_matches_cpu_per_op kne=augment_batch 2 20"
)
# The criterion benches with CUDA groups (decode has none).
criterion_benches=(loss conv step augment)

# ---- helpers ---------------------------------------------------------------------------------------
elapsed() {
    if ((dry_run)); then echo "$clock"; else echo $(($(date +%s) - start)); fi
}
note() { ((dry_run)) || echo "[$(elapsed)s] $*" | tee -a "$log" >&2; }
say() { ((dry_run)) || echo "$*" | tee -a "$log"; } # to the log and stdout
row() { ((dry_run)) || rows+=("| $1 | $2 | $3 | $4 | ${5//|//} |"); } # tier, step, status, time, result
secs() { [ "$step_seconds" = - ] && echo - || echo "${step_seconds}s"; }
words() { # the command as one line a shell would read back
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
}

# step TIER NAME LIMIT CMD...: runs CMD with a time limit, capped by what is left of the budget (the
# step is skipped when that is under min(LIMIT, 20) s); its output goes to $work/NAME.out and the log.
# Sets step_status and step_seconds. In a dry run it prints the step's plan line instead.
step() {
    local tier=$1 name=$2 limit=$3
    shift 3
    local left=$((budget - $(elapsed) - summary_reserve))
    local need=$((limit < 20 ? limit : 20))
    local given=$((limit < left ? limit : left))
    ((left < need)) && given=0
    if ((dry_run)); then
        printf '%s\t%s\t%s\t%s\t%s\n' "$tier" "$name" "$limit" "$given" "$(words "$@")"
        clock=$((clock + given))
        limit_total[$tier]=$((limit_total[$tier] + limit))
        worst_total[$tier]=$((worst_total[$tier] + given))
        step_status=planned
        step_seconds=-
        return
    fi
    if ((given == 0)); then
        step_status="skipped (budget)"
        step_seconds=-
        note "skip $name: ${left}s of the budget left"
        return
    fi
    note "run  $name (limit ${given}s): $(words "$@")"
    echo "=================== $name: $(words "$@") ===================" >> "$log"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after="$kill_grace" "$given" "$@" > "$work/$name.out" 2>&1
    rc=$?
    cat "$work/$name.out" >> "$log"
    step_seconds=$(($(date +%s) - t0))
    case $rc in
        0) step_status=ok ;;
        124 | 137) step_status="TIMEOUT (${given}s)" ;;
        *) step_status="FAILED (exit $rc)" ;;
    esac
    note "done $name: $step_status in ${step_seconds}s"
}

# gpu_test TIER BINARY TEST LIMIT: one #[ignore]d test in its own process. A passing step whose
# output lacks "1 passed" ran no test (a name the binary does not have): NOT RUN. A failed runtime
# self-test, or two timeouts in a row, stops the GPU tests ($gpu_stop says why).
gpu_stop=""
gpu_timeouts=0
gpu_test() {
    local tier=$1 bin=$2 test=$3 limit=$4
    local name="test_${bin}__${test//::/.}"
    if ((!dry_run)); then
        if [ -n "$gpu_stop" ]; then
            step_status="skipped ($gpu_stop)"
            step_seconds=-
            note "skip $name: $gpu_stop"
            return
        fi
        if [ ! -x "$exe/tests/$bin" ]; then
            step_status="skipped ($bin not in pack)"
            step_seconds=-
            return
        fi
    fi
    step "$tier" "$name" "$limit" "$exe/tests/$bin" --ignored --exact "$test" --test-threads=1 --nocapture
    ((dry_run)) && return
    if [ "$step_status" = ok ] && ! grep -q "test result: ok. 1 passed" "$work/$name.out"; then
        step_status="NOT RUN (no test $test in $bin)"
    fi
    case $step_status in
        TIMEOUT*) gpu_timeouts=$((gpu_timeouts + 1)) ;;
        skipped*) ;;
        *) gpu_timeouts=0 ;;
    esac
    ((gpu_timeouts >= 2)) && gpu_stop="two GPU test timeouts in a row"
    if [ "$bin" = cuda_gpu ] && [ "$step_status" != ok ] && [[ $step_status != skipped* ]]; then
        local s
        for s in "${self_tests[@]}"; do
            [ "${s%% *}" = "$test" ] && gpu_stop="runtime self-test $test failed"
        done
    fi
}

# A failed test's reason, or what a passing one printed that is worth a row.
test_result() {
    local out="$work/$1.out"
    case $step_status in
        ok) grep -m1 -o "cuda: .*" "$out" 2>/dev/null || echo "1 passed" ;;
        skipped* | NOT*) echo "" ;;
        *) { grep -m1 -A1 "panicked at" "$out" || tail -2 "$out"; } 2>/dev/null | tr '\n' ' ' | cut -c1-240 ;;
    esac
}

# ms/step and samples/s of a bench output ("...: 1234.5 samples/s (12.34 ms/step over 50 steps)").
ms_per_step() { grep -h "samples/s" "$1" 2>/dev/null | tail -1 | sed -n 's/.*(\([0-9.]*\) ms\/step.*/\1/p'; }
bench_sps() { grep -h "samples/s" "$1" 2>/dev/null | tail -1 | sed -n 's/.*: \([0-9.]*\) samples\/s.*/\1/p'; }

# bench TIER INPUT PRECISION GRAPHS LIMIT: `ltrain bench` of the three-expert ResNet-32 at batch 128.
bench() {
    local tier=$1 input=$2 tf=$3 graphs=$4 limit=$5 flag=()
    [ "$tf" = strict ] && flag=(--no-tf32)
    local name="bench_${input}_$tf"
    [ "$graphs" = off ] && name="${name}_eager"
    step "$tier" "$name" "$limit" "$ltrain" bench --device cuda --batch-size 128 --steps 50 --warmup 5 \
        --input "$input" --cuda-graphs "$graphs" "${flag[@]}"
    local line
    line=$(grep -h "samples/s" "$work/$name.out" 2>/dev/null | tail -1 | sed 's/.*: //')
    row "$tier" "ltrain bench, ResNet-32 x3, batch 128, $input, $tf, graphs $graphs" "$step_status" "$(secs)" \
        "${line:-$(tail -1 "$work/$name.out" 2>/dev/null | cut -c1-160)}"
}

# The summary (header: the GPU that ran it and the date), appended to the log and printed last.
finish() {
    {
        echo "## ltrain device check on ${gpu_name:-an unknown GPU}${gpu_driver:+ (driver $gpu_driver)}, $run_date"
        echo
        echo "$(elapsed)s of a ${budget}s budget; ${glibc:-glibc unknown}; pack ${pack_commit:-of unknown commit}"
        [ -n "$gpu_stop" ] && echo "GPU tests stopped: $gpu_stop."
        echo
        echo "| tier | step | status | time | result |"
        echo "|---|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
    } > "$summary"
    echo >> "$log"
    cat "$summary" >> "$log"
    echo
    cat "$summary"
    rm -rf "$work"
}

# ---- environment: printed first ---------------------------------------------------------------------
gpu_name="" gpu_driver="" glibc="" pack_commit=""
run_date="$(date -u '+%Y-%m-%d %H:%M UTC')"
if ((dry_run)); then
    echo "# ltrain device check, dry run: nothing is run. Columns: tier, step, limit_s, worst_s, command."
    printf 'header\tgpu\t%s\n' "(name and driver from nvidia-smi, at run time)"
    printf 'header\tdate\t%s\n' "(UTC, at run time)"
    printf 'header\tpack\t%s\n' "$pack"
    printf 'cap\tsmoke\t%s\n' "$smoke_cap"
    printf 'reserve\tsetup\t%s\n' "$setup_reserve"
    printf 'reserve\tsummary\t%s\n' "$summary_reserve"
else
    : > "$log"
    IFS=, read -r gpu_name gpu_driver gpu_memory < <(nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader 2>/dev/null | head -1)
    trim() { sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<< "$1"; }
    gpu_name=$(trim "${gpu_name:-}")
    gpu_driver=$(trim "${gpu_driver:-}")
    gpu_memory=$(trim "${gpu_memory:-}")
    [ -z "$gpu_name" ] && gpu_name="unknown GPU (nvidia-smi gave no name)"
    glibc=$(ldd --version 2>&1 | head -1)
    pack_commit=$(sed -n 's/^commit: //p' "$pack/MANIFEST" 2>/dev/null | head -1)
    say "ltrain device check on $gpu_name, $run_date"
    say "GPU: $gpu_name; driver ${gpu_driver:-?}; memory ${gpu_memory:-?}"
    say "glibc: $glibc"
    say "kernel: $(uname -r); pack: $pack (commit ${pack_commit:-unknown}); budget ${budget}s"
    {
        head -8 "$pack/MANIFEST" 2>/dev/null
        nvidia-smi 2>&1
    } >> "$log"
    if [ -n "$gpu_driver" ]; then
        row env GPU ok - "$gpu_name, driver $gpu_driver, ${gpu_memory:-?}"
    else
        row env GPU "NOT FOUND" - "nvidia-smi named no GPU"
    fi
    row env glibc ok - "$glibc"

    # cuBLAS: 13 preferred, else 12 (ltrain loads either), from the CUDA toolkit or wherever the
    # PyTorch wheels put it (nvidia-cublas: site-packages/nvidia/cu13/lib, nvidia/cublas/lib, ...);
    # its folder goes on LD_LIBRARY_PATH (harmless where ltrain finds it itself).
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
        LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_LIBRARY_PATH
    fi

    mkdir -p "$exe"
    if ! { tar -C "$exe" -xJf "$pack/executables.tar.xz" 2>/dev/null ||
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
            "$pack/executables.tar.xz" "$exe" 2>/dev/null; }; then
        note "cannot unpack $pack/executables.tar.xz"
        row env "unpack executables.tar.xz" FAILED - "cannot unpack $pack/executables.tar.xz"
        finish
        exit 1
    fi

    # The CUDA libraries and their versions: as ltrain finds them (`ltrain device`), else as found here
    # (then NCCL also needs the libnccl.so link: older ltrain opens libnccl.so, the wheels ship .so.2).
    device_out=$(timeout 10 "$ltrain" device 2>&1)
    device_rc=$?
    if ((device_rc == 0)) && [ -n "$device_out" ]; then
        while IFS= read -r line; do say "ltrain device: $line"; done <<< "$device_out"
        row env "CUDA libraries (ltrain device)" ok - "$(echo "$device_out" | paste -sd';' - | cut -c1-300)"
    else
        say "ltrain device: unavailable (exit $device_rc: $(echo "$device_out" | head -1 | cut -c1-120)); the script's own search:"
        version_of() { # the version a library file's name carries, through its links
            local real
            real=$(readlink -f "$1")
            echo "${real##*.so.}"
        }
        libcuda=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
        if [ -n "$libcuda" ]; then
            say "driver library: $libcuda (version $(version_of "$libcuda"))"
        else
            say "driver library: no libcuda.so.1 in the loader cache"
        fi
        if [ -n "$cublas" ]; then
            say "cuBLAS: $cublas (version $(version_of "$cublas"))"
            for lt in "$(dirname "$cublas")"/libcublasLt.so.*; do
                [ -e "$lt" ] && say "cuBLASLt: $lt (version $(version_of "$lt"))" && break
            done
            row env "cuBLAS found" ok - "$cublas (version $(version_of "$cublas"))"
        else
            say "cuBLAS: no libcublas.so.13 or .12 found; the GPU tests will say so"
            row env "cuBLAS found" "NOT FOUND" - "no libcublas.so.13 or .so.12 under the toolkit or site-packages"
        fi
        nccl=$(python3 -c "import glob, site; print(next(iter(sorted(h for sp in site.getsitepackages() + [site.getusersitepackages()] for h in glob.glob(sp + '/nvidia/*/lib/libnccl.so.2'))), ''))" 2>/dev/null)
        [ -z "$nccl" ] && nccl=$(find /usr /opt -name 'libnccl.so.2*' 2>/dev/null | head -1)
        if [ -n "$nccl" ]; then
            mkdir -p "$work/nccl" && ln -sf "$nccl" "$work/nccl/libnccl.so"
            export LD_LIBRARY_PATH="$work/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            say "NCCL: $nccl (version $(version_of "$nccl"); linked as libnccl.so)"
            row env "NCCL found" ok - "$nccl (version $(version_of "$nccl"), linked as libnccl.so)"
        else
            say "NCCL: no libnccl.so.2 found; the NCCL tests will say so"
            row env "NCCL found" "NOT FOUND" - "no libnccl.so.2: the NCCL tests will say so"
        fi
    fi
    say "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
fi

# Tests a binary of the pack has beyond the plan (and test binaries the plan does not name) run at the
# end of the full tier's GPU tests.
declare -A planned=()
for t in "${self_tests[@]}" "${smoke_tests[@]}"; do planned["cuda_gpu ${t%% *}"]=1; done
for t in "${full_tests[@]}"; do planned["${t% *}"]=1; done
extra_tests=()
if ((!dry_run)); then
    for t in "$exe"/tests/*; do
        [ -x "$t" ] || continue
        bin=$(basename "$t")
        while IFS= read -r test_name; do
            [ -n "$test_name" ] && [ -z "${planned["$bin $test_name"]:-}" ] && extra_tests+=("$bin $test_name 15")
        done < <("$t" --list --ignored --format terse 2>/dev/null | sed -n 's/: test$//p')
    done
    ((${#extra_tests[@]})) && note "tests beyond the plan (run last): ${extra_tests[*]}"
fi

# ---- SMOKE tier -------------------------------------------------------------------------------------
# 1-2. The runtime self-tests, then one convolution, one batch norm and one training step vs the CPU.
for t in "${self_tests[@]}" "${smoke_tests[@]}"; do
    read -r test_name limit <<< "$t"
    gpu_test smoke cuda_gpu "$test_name" "$limit"
    row smoke "GPU test cuda_gpu $test_name" "$step_status" "$(secs)" "$(test_result "test_cuda_gpu__$test_name")"
done

# 3. ltrain bench with CUDA graphs on and off, beside the PyTorch peer.
bench smoke pre-augmented tf32 on 25
bench smoke pre-augmented tf32 off 25
peer="$pack/peers/torch_resnet32_3e.py"
declare -A torch_sps=()
for mode in fp32:45 amp:30; do
    limit=${mode#*:}
    mode=${mode%:*}
    flag=()
    [ "$mode" = amp ] && flag=(--amp)
    if ((dry_run)) || [ -f "$peer" ]; then
        step smoke "torch_$mode" "$limit" env PYTHONUNBUFFERED=1 python3 "$peer" --device cuda --steps 100 "${flag[@]}"
        sps=$(grep -ho "samples_per_second=[0-9.]*" "$work/torch_$mode.out" 2>/dev/null | tail -1 | cut -d= -f2)
        torch_line=$(grep -h "^torch " "$work/torch_$mode.out" 2>/dev/null | tail -1 | cut -d' ' -f1-2)
        row smoke "PyTorch peer, eager $mode, batch 128" "$step_status" "$(secs)" \
            "${sps:+$sps samples/s ($torch_line)}${sps:-$(tail -1 "$work/torch_$mode.out" 2>/dev/null | cut -c1-160)}"
        torch_sps[$mode]=${sps:-}
    else
        row smoke "PyTorch peer, eager $mode" "skipped (not in pack)" - ""
    fi
done
ours=$(bench_sps "$work/bench_pre-augmented_tf32.out")
if [ -n "$ours" ] && [ -n "${torch_sps[fp32]:-}${torch_sps[amp]:-}" ]; then
    row smoke "ltrain (graphs, TF32) vs PyTorch eager" ok - "$(awk -v o="$ours" -v f="${torch_sps[fp32]:-0}" -v a="${torch_sps[amp]:-0}" \
        'BEGIN { printf "%.2fx fp32, %.2fx bf16 autocast (samples/s: %s vs %s, %s)", (f > 0 ? o / f : 0), (a > 0 ? o / a : 0), o, f, a }')"
fi

# ---- FULL tier ---------------------------------------------------------------------------------------
# 4. The other GPU tests, one row per test binary.
declare -A t_passed=() t_nfailed=() t_failed=() t_skipped=() t_why=() t_seconds=()
for t in "${full_tests[@]}" "${extra_tests[@]}"; do
    read -r bin test_name limit <<< "$t"
    gpu_test full "$bin" "$test_name" "$limit"
    ((dry_run)) && continue
    case $step_status in
        ok) t_passed[$bin]=$((${t_passed[$bin]:-0} + 1)) ;;
        skipped*)
            t_skipped[$bin]=$((${t_skipped[$bin]:-0} + 1))
            t_why[$bin]=${step_status#skipped }
            ;;
        *)
            t_nfailed[$bin]=$((${t_nfailed[$bin]:-0} + 1))
            t_failed[$bin]="${t_failed[$bin]:-}${t_failed[$bin]:+; }$test_name ($step_status) $(test_result "test_${bin}__${test_name//::/.}")"
            ;;
    esac
    [ "$step_seconds" != - ] && t_seconds[$bin]=$((${t_seconds[$bin]:-0} + step_seconds))
done
if ((!dry_run)); then
    for bin in $(printf '%s\n' "${full_tests[@]}" "${extra_tests[@]}" | cut -d' ' -f1 | awk '!seen[$0]++'); do
        status=ok
        [ -n "${t_failed[$bin]:-}" ] && status="FAILED ${t_nfailed[$bin]}"
        [ "${t_passed[$bin]:-0}" = 0 ] && [ -z "${t_failed[$bin]:-}" ] && status=skipped
        row full "GPU tests $bin --ignored, one process each" "$status" "${t_seconds[$bin]:-0}s" \
            "${t_passed[$bin]:-0} passed${t_failed[$bin]:+; failed: ${t_failed[$bin]}}${t_skipped[$bin]:+; ${t_skipped[$bin]} skipped ${t_why[$bin]}}"
    done
fi

# 5. The other bench variants, and the device-augment slowdown.
bench full pre-augmented strict on 25
bench full device-augment tf32 on 25
bench full device-augment tf32 off 25
bench full host-upload tf32 on 25
if ((!dry_run)); then
    pre_ms=$(ms_per_step "$work/bench_pre-augmented_tf32.out")
    aug_ms=$(ms_per_step "$work/bench_device-augment_tf32.out")
    if [ -n "$pre_ms" ] && [ -n "$aug_ms" ]; then
        row full "device-augment step vs pre-augmented, tf32" ok - "$(awk -v pre="$pre_ms" -v aug="$aug_ms" 'BEGIN {
            pct = (aug - pre) / pre * 100
            printf "%+.1f%% (%s vs %s ms/step): %s", pct, aug, pre, (pct <= 10 ? "within 10%" : "OVER 10%")
        }')"
    else
        row full "device-augment step vs pre-augmented, tf32" "no figures" - "pre ${pre_ms:-?} ms, device-augment ${aug_ms:-?} ms"
    fi
fi

# 6. A short real training run.
data="$work/data"
have_data=1
if ((!dry_run)); then
    mkdir -p "$data"
    for f in train_lt_r100.bin test.bin; do
        if [ -f "$pack/data/$f.xz" ]; then
            xz -dc "$pack/data/$f.xz" > "$data/$f" 2>/dev/null ||
                python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$pack/data/$f.xz" "$data/$f" ||
                have_data=0
        else
            have_data=0
        fi
    done
fi
if [ "$have_data" = 1 ]; then
    run_dir="$work/run"
    step full train 60 "$ltrain" train --dataset cifar10-lt --train-file "$data/train_lt_r100.bin" \
        --test-file "$data/test.bin" --imbalance 100 --device cuda --epochs 3 --stage2-epoch 2 \
        --warmup-epochs 0 --milestones 2 --batch-size 128 --out "$run_dir" --quiet
    if ((!dry_run)); then
        cp "$run_dir/metrics.jsonl" "$log_dir/train-metrics.jsonl" 2>/dev/null
        last=$(tail -1 "$run_dir/metrics.jsonl" 2>/dev/null | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("epoch %s, stage %s, train loss %.3f, top-1 %s" % (r.get("epoch"), r.get("stage"), r.get("train_loss", float("nan")), r.get("top1")))
' 2>/dev/null)
        row full "train CIFAR-10-LT r100, 3 epochs (SLA in the last)" "$step_status" "$(secs)" "${last:-no metrics}"
    fi
else
    row full "train CIFAR-10-LT" "skipped (no data in pack)" - ""
fi

# 7. compute-sanitizer: each run around one named test, its kernels bounded by filter and count.
if ((dry_run)); then
    sanitizer=compute-sanitizer
else
    sanitizer=$(command -v compute-sanitizer)
    for s in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
        [ -z "$sanitizer" ] && [ -x "$s" ] && sanitizer=$s
    done
    # the nvidia-cuda-sanitizer-api wheel
    [ -z "$sanitizer" ] && sanitizer=$(python3 -c "import glob, site; print(next(iter(sorted(h for sp in site.getsitepackages() for h in glob.glob(sp + '/nvidia/*/compute-sanitizer/compute-sanitizer'))), ''))" 2>/dev/null)
fi
if [ -n "$sanitizer" ]; then
    # --kernel-name is 2023.3's name (CUDA 12.3) for --kernel-regex; same key=value filters.
    filter_opt=--kernel-name
    if ((!dry_run)) && ! "$sanitizer" --help 2>/dev/null | grep -q -- '--kernel-name '; then
        "$sanitizer" --help 2>/dev/null | grep -q -- '--kernel-regex ' && filter_opt=--kernel-regex
    fi
    declare -A s_clean=() s_errors=() s_failed=() s_skipped=() s_why=() s_seconds=()
    s_timeouts=0
    for r in "${sanitizer_runs[@]}"; do
        read -r tool bin test_name filter count limit <<< "$r"
        name="sanitize_${tool}_${filter#*=}"
        [ "$bin" != cuda_gpu ] && name="${name}_$bin"
        if ((!dry_run)); then
            why=$gpu_stop
            ((s_timeouts >= 2)) && why="two sanitizer timeouts in a row"
            [ -x "$exe/tests/$bin" ] || why="$bin not in pack"
            if [ -n "$why" ]; then
                s_skipped[$tool]=$((${s_skipped[$tool]:-0} + 1))
                s_why[$tool]=$why
                continue
            fi
        fi
        step full "$name" "$limit" "$sanitizer" --tool "$tool" "$filter_opt" "$filter" --launch-count "$count" \
            --error-exitcode 99 --print-limit 20 "$exe/tests/$bin" --ignored --exact "$test_name" --test-threads=1
        ((dry_run)) && continue
        if [ "$step_status" = ok ] && ! grep -q "test result: ok. 1 passed" "$work/$name.out"; then
            step_status="NOT RUN (no test $test_name in $bin)"
        fi
        case $step_status in
            TIMEOUT*) s_timeouts=$((s_timeouts + 1)) ;;
            skipped*) ;;
            *) s_timeouts=0 ;;
        esac
        verdict=$(grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$work/$name.out" 2>/dev/null | tail -1 | sed 's/^=* *//')
        case $step_status in
            ok) s_clean[$tool]="${s_clean[$tool]:-}${s_clean[$tool]:+, }${filter#*=}" ;;
            skipped*)
                s_skipped[$tool]=$((${s_skipped[$tool]:-0} + 1))
                s_why[$tool]=budget
                ;;
            "FAILED (exit 99)") s_errors[$tool]="${s_errors[$tool]:-}${s_errors[$tool]:+; }${filter#*=} in $test_name: ${verdict:-see the log}" ;;
            *) s_failed[$tool]="${s_failed[$tool]:-}${s_failed[$tool]:+; }${filter#*=} in $test_name: $step_status ${verdict:-$(tail -1 "$work/$name.out" 2>/dev/null | cut -c1-100)}" ;;
        esac
        [ "$step_seconds" != - ] && s_seconds[$tool]=$((${s_seconds[$tool]:-0} + step_seconds))
    done
    if ((!dry_run)); then
        for tool in memcheck racecheck synccheck; do
            status=ok
            [ -z "${s_clean[$tool]:-}" ] && status=skipped
            [ -n "${s_failed[$tool]:-}" ] && status=FAILED
            [ -n "${s_errors[$tool]:-}" ] && status=ERRORS
            row full "compute-sanitizer $tool (self-tests, one kernel a family)" "$status" "${s_seconds[$tool]:-0}s" \
                "clean: ${s_clean[$tool]:-none}${s_errors[$tool]:+; ERRORS: ${s_errors[$tool]}}${s_failed[$tool]:+; failed: ${s_failed[$tool]}}${s_skipped[$tool]:+; ${s_skipped[$tool]} skipped (${s_why[$tool]})}"
        done
    fi
else
    row full "compute-sanitizer" "skipped (not found)" - "no compute-sanitizer on PATH, in /usr/local/cuda*/bin or site-packages"
fi

# 8. The criterion benches' CUDA groups.
for name in "${criterion_benches[@]}"; do
    b="$exe/benches/$name"
    if ((!dry_run)) && [ ! -x "$b" ]; then
        row full "criterion bench $name (cuda groups)" "skipped (not in pack)" - ""
        continue
    fi
    step full "criterion_$name" 45 "$b" --bench cuda --warm-up-time 1 --measurement-time 3
    ((dry_run)) && continue
    thrpt=$(grep -h "thrpt:" "$work/criterion_$name.out" | head -3 | sed 's/ *thrpt: *//' | paste -sd';' -)
    row full "criterion bench $name (cuda groups)" "$step_status" "$(secs)" "${thrpt:-see log}"
done

# ---- summary ------------------------------------------------------------------------------------------
if ((dry_run)); then
    printf 'total\tsmoke\t%s\t%s\n' "${limit_total[smoke]}" "${worst_total[smoke]}"
    printf 'total\tfull\t%s\t%s\n' "${limit_total[full]}" "${worst_total[full]}"
    printf 'total\tworst_case\t%s\n' $((setup_reserve + worst_total[smoke] + worst_total[full] + summary_reserve))
    printf 'budget\t%s\n' "$budget"
    exit 0
fi
finish
