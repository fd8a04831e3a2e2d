#!/usr/bin/env bash
# Builds, here, everything scripts/device-check.sh runs on a GPU machine that has no Rust toolchain and
# no internet, and packs it into device-pack/ (gitignored):
#   executables.tar.xz      bin/ltrain (release, sm_90 fatbins embedded, no PTX; LTRAIN_REQUIRE_CUDA=1),
#                           tests/<name> for each of LTRAIN_GPU_TESTS (default: cuda_gpu
#                           device_augment; their GPU tests are #[ignore]d: run with --ignored),
#                           benches/<name> (every criterion bench; their CUDA groups run on a GPU)
#   data/                   CIFAR-10-LT rho=100 training records and the first LTRAIN_TEST_RECORDS
#                           (default 2000, 175-225 a class; 0 = all 10000) test records, xz-compressed
#   peers/                  the PyTorch peer for side-by-side timing
#   device-check.sh, MANIFEST
# Debug info is stripped (symbols kept) and everything is compressed: the device call carries at most
# 64 MiB, the working tree included.
#
# Usage: scripts/pack-device.sh [PACK_DIR]      (default: device-pack)
# Then, with the device tool: carry ["device-pack"], command
#   bash device-pack/device-check.sh device-pack "$OUT"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pack="${1:-device-pack}"
data_src="${LTRAIN_DATA:-$root/../shared/data/cifar-10}"
peer_src="${LTRAIN_PEERS:-$root/../shared/peers}"
max_mib=60
test_records="${LTRAIN_TEST_RECORDS:-2000}"
gpu_tests=()
for t in ${LTRAIN_GPU_TESTS:-cuda_gpu device_augment}; do
    [ -f "tests/$t.rs" ] && gpu_tests+=(--test "$t")
done

# nvcc: build.rs looks at NVCC, CUDA_HOME/CUDA_PATH, PATH, then .venv-nvcc; the GPU build must have it.
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${NVCC:-}" ] && ! ls .venv-nvcc/lib/python*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
    echo "nvcc not found: run scripts/install-nvcc.sh first" >&2
    exit 1
fi
export LTRAIN_REQUIRE_CUDA=1
# sm_90 machine code only: the pack's GPU runs it directly, and the PTX beside it would double the
# fatbins every executable embeds (the pack would not fit).
export LTRAIN_CUDA_PTX=0

# Executables of one cargo invocation, as "kind name path" lines (from --message-format=json).
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        print(t["kind"][0], t["name"], m["executable"])
'
}

echo "building (release) ..." >&2
cargo build --release --bin ltrain --message-format=json | executables > /tmp/ltrain-pack-bin.txt
cargo test --release --no-run "${gpu_tests[@]}" --message-format=json | executables > /tmp/ltrain-pack-tests.txt
cargo bench --no-run --message-format=json | executables > /tmp/ltrain-pack-benches.txt

rm -rf "$pack"
stage="$(mktemp -d /tmp/ltrain-pack.XXXXXX)"
mkdir -p "$pack/data" "$pack/peers" "$stage/bin" "$stage/tests" "$stage/benches"
copy_stripped() { # src dst
    cp "$1" "$2"
    strip --strip-debug "$2" 2>/dev/null || true
}
while read -r kind name path; do
    [ "$kind" = bin ] && copy_stripped "$path" "$stage/bin/$name"
done < /tmp/ltrain-pack-bin.txt
while read -r kind name path; do
    [ "$kind" = test ] && copy_stripped "$path" "$stage/tests/$name"
done < /tmp/ltrain-pack-tests.txt
while read -r kind name path; do
    [ "$kind" = bench ] && copy_stripped "$path" "$stage/benches/$name"
done < /tmp/ltrain-pack-benches.txt
[ -x "$stage/bin/ltrain" ] || { echo "no ltrain binary was built" >&2; exit 1; }
[ -x "$stage/tests/cuda_gpu" ] || { echo "no cuda_gpu test executable was built" >&2; exit 1; }
(cd "$stage" && find . -type f -printf '%s\t%p\n' | sort -k2) > "$stage/contents.txt"
tar -C "$stage" -cf - bin tests benches | xz -T0 -6 > "$pack/executables.tar.xz"

if [ -f "$data_src/train_lt_r100.bin.xz" ] && [ -f "$data_src/test.bin.xz" ]; then
    cp "$data_src/train_lt_r100.bin.xz" "$pack/data/"
    if [ "$test_records" -gt 0 ]; then
        # CIFAR records are 3073 bytes; the test set is in its original (class-mixed) order.
        # (head closes the pipe early: xz's SIGPIPE is expected, hence no pipefail here)
        (set +o pipefail; xz -dc "$data_src/test.bin.xz" | head -c $((test_records * 3073)) | xz -T0 -6) \
            > "$pack/data/test.bin.xz"
    else
        cp "$data_src/test.bin.xz" "$pack/data/"
    fi
else
    echo "warning: CIFAR-10 files not found in $data_src; the training run will be skipped" >&2
fi
if [ -f "$peer_src/torch_resnet32_3e.py" ]; then
    cp "$peer_src/torch_resnet32_3e.py" "$pack/peers/"
else
    echo "warning: $peer_src/torch_resnet32_3e.py not found; the PyTorch timing will be skipped" >&2
fi
cp scripts/device-check.sh "$pack/device-check.sh"

{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "nvcc: ${NVCC:-$( (command -v nvcc || ls .venv-nvcc/lib/python*/site-packages/nvidia/cu13/bin/nvcc) 2>/dev/null | head -1)}"
    echo "CUDA_ARCH: ${CUDA_ARCH:-sm_90}"
    echo "test records: ${test_records} (0 = all)"
    echo "executables.tar.xz:"
    sed 's/^/  /' "$stage/contents.txt"
    (cd "$pack" && find . -type f ! -name MANIFEST -printf '%s\t%p\n' | sort -k2)
} > "$pack/MANIFEST"
rm -rf "$stage"

size_kib=$(du -sk "$pack" | cut -f1)
echo "packed $pack: $((size_kib / 1024)) MiB" >&2
if [ "$size_kib" -gt $((max_mib * 1024)) ]; then
    echo "error: $pack is over ${max_mib} MiB (the device call carries at most 64 MiB with the tree)" >&2
    exit 1
fi
# What the device call carries: the working tree (tracked and untracked, not ignored) plus the pack,
# checked here, before any device time is spent.
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carried_kib=$(( size_kib + tree_bytes / 1024 ))
echo "carried by the device call: $((carried_kib / 1024)) MiB (tree $((tree_bytes >> 20)) MiB + pack)" >&2
if [ "$carried_kib" -gt $((64 * 1024)) ]; then
    echo "error: the working tree and $pack come to $((carried_kib / 1024)) MiB, over the 64 MiB a device call carries" >&2
    exit 1
fi
