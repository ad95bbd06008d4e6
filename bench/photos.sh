#!/usr/bin/env bash
# Photo folders as a user brings them (train/ and val/ only): the EfficientNet-Lite0 linear probe,
# then `imgclf train DIR` with no flags, with --time-budget 3m and with --time-budget 1m.
# Validation accuracy (no test split) and the wall time of the whole command. Results: BENCHMARKS.md.
# Usage: bench/photos.sh FOLDER [FOLDER ...]   (2 CPU cores: about 25 minutes for the three shared folders)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-photos}
IMGCLF=.venv/bin/imgclf
mkdir -p "$OUT"

run() {
    local folder=$1 name=$2; shift 2
    local tag
    tag="$(basename "$folder")-$name"
    export IMGCLF_CACHE_DIR="$OUT/cache-$tag"   # embeddings computed, never read from an earlier run
    rm -rf "$IMGCLF_CACHE_DIR"
    local started=$(date +%s.%N)
    $IMGCLF train "$folder" --output "$OUT/$tag" --overwrite --json "$@" > "$OUT/$tag.json" 2> "$OUT/$tag.log"
    local seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
    python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
m = r['metrics']
cv = m.get('cv_accuracy')
print(f\"{sys.argv[2]:<45} {r['model']:<20} val {m['val_accuracy']:.4f}  cv {'-' if cv is None else f'{cv:.4f}'}  wall {sys.argv[3]} s\")
" "$OUT/$tag.json" "$tag" "$seconds"
}

for folder in "$@"; do
    run "$folder" lite0-probe --model efficientnet_lite0 --pretrained --finetune linear-probe
    run "$folder" no-flags
    run "$folder" budget-3m --time-budget 3m
    run "$folder" budget-1m --time-budget 1m
done
