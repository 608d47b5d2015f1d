#!/usr/bin/env bash
# Classification + localization by regression (the lecture's first half): train a localizer on
# single-object data -> detect (the top-5 (class, box, score) guesses per image) -> evaluate with
# the ILSVRC localization metric (top-1 / top-5 localization and classification errors, GT known).
# Then Overfeat on the same data: window classifier + regressor run densely (FC layers as
# convolutions) over several scales, boxes merged greedily -> the same metric, and mAP.
#
# Usage:  examples/localize.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": built-in single-object shapes, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/localize).
#
# Settings (environment variables):
#   TRAIN_SPLIT=trainval TEST_SPLIT=test
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   BOXES=agnostic (or specific)  ATTACH=conv (or fc)  K=1  HEAD_ONLY=1 (0: fine-tune end to end)
#   EPOCHS=20 INPUT_SIZE=224 DEVICE=auto SEED=0
#   OVERFEAT=1 (0: skip Overfeat)  OVERFEAT_EPOCHS=8  MERGE=greedy (or nms)
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/localize}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
HEAD_ONLY="${HEAD_ONLY:-1}"
mkdir -p "$OUT"

if [[ -z "$DATASET" ]]; then
  DATASET="$OUT/data"
  rcnn data make-shapes "$DATASET" --single --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
    --size "${IMAGE_SIZE:-256}" --seed "${SEED:-0}"
fi

rcnn localize train "$DATASET" --split "$TRAIN_SPLIT" --out "$OUT/run" --boxes "${BOXES:-agnostic}" \
  --attach "${ATTACH:-conv}" --k "${K:-1}" --input-size "${INPUT_SIZE:-224}" --epochs "${EPOCHS:-20}" \
  --device "${DEVICE:-auto}" --seed "${SEED:-0}" --no-progress $( [[ "$HEAD_ONLY" == 1 ]] && echo --head-only )
rcnn detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/run" --out "$OUT/guesses_$TEST_SPLIT.jsonl" \
  --device "${DEVICE:-auto}" --no-progress
# the model's classes: a guess of a class the test split happens not to hold is a wrong guess, not an error
CLASSES="$(python3 -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["model"]["classes"]))' "$OUT/run/config.json")"
rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/guesses_$TEST_SPLIT.jsonl" --metric loc \
  --classes "$CLASSES" --json "$OUT/loc_$TEST_SPLIT.json"
echo "localization errors: $OUT/loc_$TEST_SPLIT.json"

if [[ "${OVERFEAT:-1}" == 1 ]]; then
  rcnn overfeat train "$DATASET" --split "$TRAIN_SPLIT" --out "$OUT/overfeat" --input-size "${INPUT_SIZE:-224}" \
    --epochs "${OVERFEAT_EPOCHS:-8}" --merge "${MERGE:-greedy}" --device "${DEVICE:-auto}" --seed "${SEED:-0}" --no-progress
  rcnn detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/overfeat" --out "$OUT/overfeat_$TEST_SPLIT.jsonl" \
    --device "${DEVICE:-auto}" --no-progress
  rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/overfeat_$TEST_SPLIT.jsonl" --metric loc \
    --classes "$CLASSES" --json "$OUT/overfeat_loc_$TEST_SPLIT.json"
  rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/overfeat_$TEST_SPLIT.jsonl" --metric voc12 \
    --classes "$CLASSES" --json "$OUT/overfeat_voc12_$TEST_SPLIT.json"
  echo "Overfeat: $OUT/overfeat_loc_$TEST_SPLIT.json, $OUT/overfeat_voc12_$TEST_SPLIT.json"
fi
