#!/usr/bin/env bash
# Accuracy against time on folders as a user brings them: the EfficientNet-Lite2 linear probe, then
# `imgclf train DIR` with no flags and with --time-budget 1m, 3m and 10m (the anytime recipe: the
# probe, then fine-tuning where the time left and the probe say it pays, the better of the two kept).
# Prints validation accuracy, what was kept and why, epochs fine-tuned, and the wall time of the
# whole command. Results: BENCHMARKS.md.
# Usage: bench/anytime.sh FOLDER [FOLDER ...]   (2 CPU cores: 15-20 minutes a folder that fine-tunes)
# BUDGETS="3m 10m" bench/anytime.sh FOLDER runs only those budgets; NO_FLAGS=0 skips the no-flag run, PROBE=0 the probe;
# EXTRA="--max-train-per-class 100" is added to every run (CIFAR-10 with 100 images a class).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-anytime}
IMGCLF=.venv/bin/imgclf
BUDGETS=${BUDGETS:-"1m 3m 10m"}
mkdir -p "$OUT"

run() {
    local folder=$1 name=$2; shift 2
    local tag
    tag="$(basename "$folder")-$name"
    export IMGCLF_CACHE_DIR="$OUT/cache-$tag"   # embeddings computed, never read from an earlier run
    rm -rf "$IMGCLF_CACHE_DIR"
    local started=$(date +%s.%N)
    # shellcheck disable=SC2086 # EXTRA holds several options
    $IMGCLF train "$folder" --output "$OUT/$tag" --overwrite --json ${EXTRA:-} "$@" > "$OUT/$tag.json" 2> "$OUT/$tag.log"
    local seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
    .venv/bin/python - "$OUT/$tag.json" "$OUT/$tag/model.json" "$tag" "$seconds" <<'PY'
import json, sys
result, description = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
kept = description.get("kept") or {}
tuned = kept.get("finetuned") or {}
probe = (kept.get("probe") or {}).get("val_accuracy")
test = result["metrics"].get("test_accuracy")


def number(value):
    return "-" if value is None else f"{value:.4f}"


print(f"{sys.argv[3]:<32} {result['model']:<20} val {number(result['metrics']['val_accuracy'])}  "
      f"test {number(test)}  probe {number(probe)}  fine-tuned {number(tuned.get('val_accuracy'))} "
      f"({tuned.get('epochs', 0)} epochs)  kept {kept.get('kept', 'probe')}  wall {sys.argv[4]} s")
if kept:
    print(f"    {kept['why']}")
PY
}

for folder in "$@"; do
    if [ "${PROBE:-1}" = 1 ]; then run "$folder" probe-lite2 --model efficientnet_lite2 --pretrained --finetune linear-probe; fi
    if [ "${NO_FLAGS:-1}" = 1 ]; then run "$folder" no-flags; fi
    for budget in $BUDGETS; do
        run "$folder" "budget-$budget" --time-budget "$budget"
    done
done
