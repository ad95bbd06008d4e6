#!/usr/bin/env bash
# Transfer learning with 100 training images per class of CIFAR-10 (JPEG copy), tested on all
# 10,000 test images: pretrained EfficientNet-Lite0 (two-stage fine-tuning, a linear probe)
# against training from scratch on the same 1,000 images. Results: BENCHMARKS.md.
# Usage: bench/transfer_cifar10.sh [path/to/cifar10-jpeg.tar.gz]   (2 CPU cores: about 20 minutes)
#        ONLY=lite0-two-stage-9ep-128px bench/transfer_cifar10.sh ... (one row)
#        SEED=1 ONLY=... bench/transfer_cifar10.sh ...                  (another seed: training subset, init, order)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets/cifar10-jpeg.tar.gz}
OUT=${OUT:-runs/bench-transfer}
SEED=${SEED:-0}
IMGCLF=.venv/bin/imgclf
export IMGCLF_CACHE_DIR=${IMGCLF_CACHE_DIR:-$OUT/cache}
rm -rf "$IMGCLF_CACHE_DIR"   # embeddings computed, not read from an earlier run

run() {
    local name=$1; shift
    [[ -z "${ONLY:-}" || "$ONLY" == "$name" ]] || return 0
    local started=$(date +%s.%N)
    $IMGCLF train "$DATA" --max-train-per-class 100 --output "$OUT/$name" --overwrite --json --seed "$SEED" "$@" > "$OUT/$name.json"
    local seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$started" "$(date +%s.%N)")
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:<40} seed {sys.argv[4]} test accuracy {r['metrics']['test_accuracy']:.4f}  wall {sys.argv[3]} s\")" \
        "$OUT/$name.json" "$name" "$seconds" "$SEED"
}

mkdir -p "$OUT"
run lite0-two-stage-9ep-128px --model efficientnet_lite0 --pretrained --finetune two-stage --epochs 9 --augment flip+translate --batch-size 32 --input-size 128
run lite0-two-stage-9ep-128px-unfreeze-all --model efficientnet_lite0 --pretrained --finetune two-stage --unfreeze-all --epochs 9 --augment flip+translate --batch-size 32 --input-size 128
run lite0-linear-probe-128px --model efficientnet_lite0 --pretrained --finetune linear-probe --input-size 128
run scratch-lite0-128px --model efficientnet_lite0 --epochs 8 --batch-size 32 --input-size 128
run scratch-resnet20-32px --model resnet20 --epochs 30
run scratch-simple_cnn-32px --model simple_cnn --epochs 30
