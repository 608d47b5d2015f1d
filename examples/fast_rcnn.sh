#!/usr/bin/env bash
# Fast R-CNN: selective-search proposals (once, stored) -> train end to end (RoI pooling over one
# forward pass per image; classifier, box regressors and convolutional layers jointly)
# -> detect with the stored test proposals (JSON lines + drawn images) -> evaluate (VOC07, VOC12).
#
# Usage:  examples/fast_rcnn.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": the built-in shapes data, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/fast_rcnn).
#
# Settings (environment variables):
#   TRAIN_SPLIT=trainval TEST_SPLIT=test
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   LIMIT=300 MODE=fast SS_MAX_SIZE=500 MIN_BOX=16      selective search (boxes kept per image [2000], ...)
#   EPOCHS=6 BATCH=2 LR=0.01 WARMUP_ITERS=100 ROIS=64 (RoIs per image and step)
#   MAX_ITERS (quick checks) RESUME=1 (continue an interrupted OUT_DIR/model)
#   MIN_SIZE / MAX_SIZE  image sides after resizing (shapes data: IMAGE_SIZE; else the CLI's 600 / 1000)
#   BACKBONE=efficientnet_lite0 WEIGHTS=imagenet WORKERS DEVICE=auto SEED=0
#   METRICS="voc07 voc12"  evaluate metrics (voc07, voc12, coco)
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/fast_rcnn}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
DEVICE="${DEVICE:-auto}"
METRICS="${METRICS:-voc07 voc12}"   # evaluate --metric: voc07 (11-point), voc12 (area), coco
SEED="${SEED:-0}"
WORKER_ARGS=()
[[ -n "${WORKERS:-}" ]] && WORKER_ARGS=(--workers "$WORKERS")

mkdir -p "$OUT"

# ---- 0. data: the user's VOC root, or the built-in shapes data
if [[ -z "$DATASET" ]]; then
    DATASET="$OUT/data"
    if [[ ! -f "$DATASET/ImageSets/Main/$TEST_SPLIT.txt" ]]; then
        rcnn data make-shapes "$DATASET" --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
            --size "${IMAGE_SIZE:-256}" --seed "$SEED"
    fi
    MIN_SIZE="${MIN_SIZE:-${IMAGE_SIZE:-256}}"
fi

# ---- 1. selective-search proposals of both splits (resumable HDF5 files)
for split in "$TRAIN_SPLIT" "$TEST_SPLIT"; do
    rcnn propose "$DATASET" --split "$split" --out "$OUT/proposals_$split.h5" --limit "${LIMIT:-300}" \
        --mode "${MODE:-fast}" --max-size "${SS_MAX_SIZE:-500}" --min-box "${MIN_BOX:-16}" --seed "$SEED" \
        ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} --no-progress
done

# ---- 2. train (metrics.jsonl: losses per logged iteration; the final model in OUT/model)
TRAIN_ARGS=(--epochs "${EPOCHS:-6}" --batch-size "${BATCH:-2}" --lr "${LR:-0.01}" --warmup-iters "${WARMUP_ITERS:-100}"
            --rois-per-image "${ROIS:-64}" --backbone "${BACKBONE:-efficientnet_lite0}" --weights "${WEIGHTS:-imagenet}"
            --seed "$SEED" --device "$DEVICE" --no-progress)
[[ -n "${MIN_SIZE:-}" ]] && TRAIN_ARGS+=(--min-size "$MIN_SIZE" --max-size "${MAX_SIZE:-$MIN_SIZE}")
[[ -z "${MIN_SIZE:-}" && -n "${MAX_SIZE:-}" ]] && TRAIN_ARGS+=(--max-size "$MAX_SIZE")
[[ -n "${MAX_ITERS:-}" ]] && TRAIN_ARGS+=(--max-iters "$MAX_ITERS")
[[ "${RESUME:-0}" == 1 ]] && TRAIN_ARGS+=(--resume)   # continue an interrupted run of the same settings
rcnn fast train "$DATASET" --split "$TRAIN_SPLIT" --proposals "$OUT/proposals_$TRAIN_SPLIT.h5" --out "$OUT/model" \
    "${TRAIN_ARGS[@]}"

# ---- 3. detect with the stored test proposals (without --proposals, selective search runs per image)
rcnn fast detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/model" --proposals "$OUT/proposals_$TEST_SPLIT.h5" \
    --device "$DEVICE" --out "$OUT/detections_$TEST_SPLIT.jsonl" --draw "$OUT/drawn" --no-progress

# ---- 4. evaluate: VOC07 (11-point) and VOC12 (area) AP, JSON and PR curves
for metric in $METRICS; do
    rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/detections_$TEST_SPLIT.jsonl" \
        --metric "$metric" --json "$OUT/eval_$metric.json" --plot "$OUT/pr_$metric"
done

show() { printf '  %-42s %s\n' "$1" "$2"; }
echo
echo "Fast R-CNN done. Outputs in $OUT (each with a *.config.json record beside it):"
show "proposals_$TRAIN_SPLIT.h5 proposals_$TEST_SPLIT.h5" "selective-search boxes (rcnn propose)"
show "model/" "model.safetensors, config.json, metrics.jsonl, checkpoints"
show "detections_$TEST_SPLIT.jsonl" "one JSON line per test image; drawn/: the images with boxes"
show "eval_voc07.json eval_voc12.json" "AP per class and mAP; pr_voc07/ pr_voc12/: PR curves"
