#!/usr/bin/env bash
# The device work of one training step for the configurations BENCHMARKS.md reports, counted on the
# count-only CUDA emulator (exact counts, no GPU, seconds of CPU): stage 1 and stage 2 of ResNet-32 x3
# at batch 128 (full and reduced widths) and ResNet-50 x3 at batch 64, 224 px, each with eager steps
# and with the step replayed as a CUDA graph.
#   bash scripts/count-steps.sh [path/to/ltrain]   (default: target/release/ltrain)
set -euo pipefail
LTRAIN="${1:-target/release/ltrain}"
run() {
    "$LTRAIN" bench --device cuda-emulated --counters --count-only --warmup 3 --steps 2 "$@"
    echo
}
for graphs in off on; do
    for stage in "" "--stage2"; do
        run --cuda-graphs $graphs --model resnet32 --expert-width full --batch-size 128 $stage
        run --cuda-graphs $graphs --model resnet32 --expert-width reduced --batch-size 128 $stage
        run --cuda-graphs $graphs --model resnet50 --batch-size 64 --image-size 224 --classes 1000 $stage
    done
done
