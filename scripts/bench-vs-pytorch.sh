#!/usr/bin/env bash
# CPU training throughput of ltrain against the PyTorch peer, the same step on the same shapes:
# 3-expert ResNet-32, batch 128, 10 classes, random pre-made views, no mixup, logit-adjusted CE,
# SGD momentum 0.9, wd 5e-4. For each case of {stage 1, stage 2} x {full, reduced width} it runs
# P pairs of (ltrain bench, scripts/torch_peer_bench.py) one after the other, and prints a table of
# the medians and of the per-pair ratios ltrain/PyTorch (results go to BENCHMARKS.md).
#
#   scripts/bench-vs-pytorch.sh [--pairs P] [--threads T] [--steps S] [--cases LIST] [--ltrain BIN]
#                               [--peer FILE]
#
#   --pairs P      pairs per case [5, or $LTRAIN_BENCH_PAIRS]
#   --threads T    CPU threads of both [2, or $LTRAIN_BENCH_THREADS]
#   --steps S      timed steps of each run, after ltrain's 1 and the peer's 3 warm-up steps
#                  [5, or $LTRAIN_BENCH_STEPS]
#   --cases LIST   comma-separated subset of stage1-full,stage1-reduced,stage2-full,stage2-reduced
#                  [all, or $LTRAIN_BENCH_CASES]
#   --ltrain BIN   the ltrain binary [target/release/ltrain; cargo build --release if missing]
#   --peer FILE    the shared peer module [../shared/peers/torch_resnet32_3e.py from the repo root]
#
# PyTorch comes from a throwaway venv, $LTRAIN_TORCH_VENV [~/.cache/ltrain/torch-venv], made with
# `python3 -m venv` and `pip install torch==2.15.0 numpy` when it has no importable torch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
all_cases=stage1-full,stage1-reduced,stage2-full,stage2-reduced
pairs=${LTRAIN_BENCH_PAIRS:-5}
threads=${LTRAIN_BENCH_THREADS:-2}
steps=${LTRAIN_BENCH_STEPS:-5}
cases=${LTRAIN_BENCH_CASES:-$all_cases}
ltrain=""
peer=()
venv=${LTRAIN_TORCH_VENV:-$HOME/.cache/ltrain/torch-venv}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --pairs) pairs=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --ltrain) ltrain=$2; shift 2 ;;
        --peer) peer=(--peer "$2"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-vs-pytorch: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$pairs" "$threads" "$steps"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-vs-pytorch: $n is not a positive integer" >&2
        exit 2
    }
done
IFS=, read -r -a case_list <<<"$cases"
for c in "${case_list[@]}"; do
    [[ ,$all_cases, == *,$c,* ]] || {
        echo "bench-vs-pytorch: unknown case $c (cases: $all_cases)" >&2
        exit 2
    }
done

if [ -z "$ltrain" ]; then
    ltrain=$root/target/release/ltrain
    if [ ! -x "$ltrain" ]; then
        echo "bench-vs-pytorch: building $ltrain" >&2
        (cd "$root" && cargo build --release >&2)
    fi
fi
[ -x "$ltrain" ] || { echo "bench-vs-pytorch: no ltrain binary at $ltrain" >&2; exit 1; }

py=$venv/bin/python
if ! "$py" -c 'import torch, numpy' 2>/dev/null; then
    echo "bench-vs-pytorch: installing PyTorch 2.15.0 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.15.0 numpy >&2
fi

# Runs a command; its output on stdout, or on stderr with a failure.
run() {
    local out
    if ! out=$("$@" 2>&1); then
        printf 'bench-vs-pytorch: failed: %s\n%s\n' "$*" "$out" >&2
        return 1
    fi
    printf '%s\n' "$out"
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for c in "${case_list[@]}"; do
    stage=${c%%-*}
    width=${c#*-}
    stage2=()
    [ "$stage" = stage2 ] && stage2=(--stage2)
    for ((p = 1; p <= pairs; p++)); do
        out=$(run "$ltrain" bench --device cpu --threads "$threads" --expert-width "$width" \
            --no-mixup "${stage2[@]}" --steps "$steps" --warmup 1)
        ours=$(sed -n 's/.*: \([0-9.]*\) samples\/s.*/\1/p' <<<"$out" | tail -1)
        out=$(run "$py" "$root/scripts/torch_peer_bench.py" "${peer[@]}" --threads "$threads" \
            --expert-width "$width" "${stage2[@]}" --steps "$steps")
        theirs=$(sed -n 's/.*samples_per_second=\([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
        if [ -z "$ours" ] || [ -z "$theirs" ]; then
            echo "bench-vs-pytorch: $c pair $p: no throughput in the output" >&2
            exit 1
        fi
        echo "bench-vs-pytorch: $c pair $p/$pairs: ltrain $ours, PyTorch $theirs samples/s" >&2
        echo "$c $ours $theirs" >>"$results"
    done
done

torch_version=$("$py" -c 'import torch; print(torch.__version__)')
echo "$("$ltrain" --version 2>/dev/null || echo ltrain) vs PyTorch $torch_version on the CPU:" \
    "$threads threads, batch 128, $steps timed steps per run, $pairs pairs per case, samples/s"
python3 - "$results" <<'EOF'
import sys
from statistics import median

rows = {}
for line in open(sys.argv[1]):
    case, ours, theirs = line.split()
    rows.setdefault(case, []).append((float(ours), float(theirs)))
print("| case | ltrain median | PyTorch median | median ratio | ratios ltrain/PyTorch |")
print("|---|---:|---:|---:|---|")
for case, pairs in rows.items():
    ratios = [o / t for o, t in pairs]
    print(
        f"| {case} | {median(o for o, _ in pairs):.1f} | {median(t for _, t in pairs):.1f} "
        f"| {median(ratios):.2f} | {' '.join(f'{r:.2f}' for r in ratios)} |"
    )
EOF
