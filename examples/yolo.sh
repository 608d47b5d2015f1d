#!/usr/bin/env bash
# YOLO v1: how much of the data an S x S grid can hold (the ceiling) -> train -> detect -> evaluate.
#
# Usage:  examples/yolo.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": the built-in shapes data, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/yolo).
#
# Settings (environment variables):
#   TRAIN_SPLIT=trainval TEST_SPLIT=test
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   GRID=7 BOXES_PER_CELL=2 INPUT_SIZE (default 64 x GRID; 32 x GRID is 4x cheaper) EPOCHS=30
#   DEVICE=auto SEED=0
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/yolo}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
GRID="${GRID:-7}"
mkdir -p "$OUT"

if [[ -z "$DATASET" ]]; then
  DATASET="$OUT/data"
  rcnn data make-shapes "$DATASET" --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
    --size "${IMAGE_SIZE:-256}" --seed "${SEED:-0}"
fi

rcnn yolo ceiling "$DATASET" --split "$TRAIN_SPLIT" --grid "$GRID" --boxes-per-cell "${BOXES_PER_CELL:-2}" --json \
  > "$OUT/ceiling_$TRAIN_SPLIT.json"
rcnn yolo train "$DATASET" --split "$TRAIN_SPLIT" --out "$OUT/run" --grid "$GRID" \
  --boxes-per-cell "${BOXES_PER_CELL:-2}" --input-size "${INPUT_SIZE:-$(( 64 * GRID ))}" --epochs "${EPOCHS:-30}" \
  --warmup-iters "${WARMUP_ITERS:-100}" --device "${DEVICE:-auto}" --seed "${SEED:-0}" --no-progress
rcnn detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/run" --out "$OUT/detections_$TEST_SPLIT.jsonl" \
  --device "${DEVICE:-auto}" --no-progress
rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/detections_$TEST_SPLIT.jsonl" --metric voc12 \
  --json "$OUT/eval_$TEST_SPLIT.json"
