#!/usr/bin/env bash
# The classic R-CNN, one stage at a time, every intermediate file kept (what `rcnn pipeline` does
# in one command, spelled out so that each stage can be inspected, swapped or rerun):
#
#   propose (train, test) -> proposals recall -> [FINETUNE=1: finetune] -> extract-features (train)
#     -> train-svm -> train-bbox -> detect (JSON lines + drawn images) -> evaluate (VOC07, VOC12)
#
# `rcnn detect` computes the test regions' features itself (from the stored test proposals), so
# only the training split's features are extracted.
#
# Usage:  examples/rcnn_stages.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset (JPEGImages/, Annotations/, ImageSets/Main/<split>.txt);
#             omitted or "": the built-in shapes data is generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/rcnn_stages).
#
# Settings (environment variables; defaults are sized for a 2-core CPU, the paper's in brackets):
#   TRAIN_SPLIT=trainval TEST_SPLIT=test
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   LIMIT=100        proposals kept per image [2000]
#   MODE=fast        selective search strategy (fast | quality)
#   SS_MAX_SIZE=500  longer image side for selective search [500]
#   MIN_BOX=16       proposals narrower/shorter than this (pixels) are dropped
#   WARP=64          warped region size [227]; PADDING (context, warped pixels) defaults to WARP/10 [16]
#   BACKBONE=efficientnet_lite0 WEIGHTS=imagenet   (WEIGHTS=none: random weights, for quick checks)
#   FINETUNE=0       1: fine-tune the backbone on warped regions first (FT_ITERS, default one epoch)
#   WORKERS          selective-search processes (default: all cores)
#   METRICS="voc07 voc12"  evaluate metrics (voc07, voc12, coco)
#   DEVICE=auto SEED=0
#
# Rerunning the script resumes: propose and extract-features continue unfinished files and skip
# finished ones; the SVMs, regressors, detections and evaluations are recomputed (seconds).
# Other settings (LIMIT, WARP, ...) need another OUT_DIR: the stored files refuse to mix settings.
# FINETUNE=1 in the same OUT_DIR reuses the proposals and writes finetune/ and *_ft outputs.
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/rcnn_stages}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
LIMIT="${LIMIT:-100}"
MODE="${MODE:-fast}"
SS_MAX_SIZE="${SS_MAX_SIZE:-500}"
MIN_BOX="${MIN_BOX:-16}"
WARP="${WARP:-64}"
PADDING="${PADDING:-$(( (WARP + 5) / 10 ))}"
BACKBONE="${BACKBONE:-efficientnet_lite0}"
WEIGHTS="${WEIGHTS:-imagenet}"
FINETUNE="${FINETUNE:-0}"
DEVICE="${DEVICE:-auto}"
METRICS="${METRICS:-voc07 voc12}"   # evaluate --metric: voc07 (11-point), voc12 (area), coco
SEED="${SEED:-0}"
WORKER_ARGS=()
[[ -n "${WORKERS:-}" ]] && WORKER_ARGS=(--workers "$WORKERS")

mkdir -p "$OUT"

# ---- 0. data: the user's VOC root, or the built-in shapes data (4 classes, VOC layout)
if [[ -z "$DATASET" ]]; then
    DATASET="$OUT/data"
    if [[ ! -f "$DATASET/ImageSets/Main/$TEST_SPLIT.txt" ]]; then
        rcnn data make-shapes "$DATASET" --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
            --size "${IMAGE_SIZE:-256}" --seed "$SEED"
    fi
else
    rcnn data info "$DATASET" --split "$TRAIN_SPLIT"   # your data: classes, object counts, any bad boxes
fi

# ---- 1. region proposals (selective search), one HDF5 file per split, resumable
for split in "$TRAIN_SPLIT" "$TEST_SPLIT"; do
    rcnn propose "$DATASET" --split "$split" --out "$OUT/proposals_$split.h5" --mode "$MODE" \
        --max-size "$SS_MAX_SIZE" --min-box "$MIN_BOX" --limit "$LIMIT" --seed "$SEED" ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} --no-progress
done

# ---- 2. how many ground-truth boxes do the test proposals cover? (an upper bound on recall)
rcnn proposals recall "$DATASET" --split "$TEST_SPLIT" --proposals "$OUT/proposals_$TEST_SPLIT.h5" \
    --json "$OUT/recall_$TEST_SPLIT.json" --plot "$OUT/recall_plots"

# ---- 3. optional (FINETUNE=1): fine-tune the backbone on warped regions (N+1-way softmax first;
#         R-CNN's step 2). The features are then extracted with the fine-tuned weights.
FEAT_WEIGHTS="$WEIGHTS"
SUFFIX=""          # "_ft" with fine-tuning: features, model, detections and evaluations sit beside the plain ones
MODEL_WEIGHTS=()   # the fine-tuned weights, recorded in the model (detect extracts features with them)
if [[ "$FINETUNE" == 1 ]]; then
    FT_ARGS=()
    [[ -n "${FT_ITERS:-}" ]] && FT_ARGS=(--max-iters "$FT_ITERS")
    rcnn finetune "$DATASET" --split "$TRAIN_SPLIT" --proposals "$OUT/proposals_$TRAIN_SPLIT.h5" \
        --backbone "$BACKBONE" --weights "$WEIGHTS" --warp-size "$WARP" --padding "$PADDING" \
        --out "$OUT/finetune" --seed "$SEED" --device "$DEVICE" ${FT_ARGS[@]+"${FT_ARGS[@]}"} --no-progress
    FEAT_WEIGHTS="$OUT/finetune/model.safetensors"
    SUFFIX="_ft"
    MODEL_WEIGHTS=(--weights "$FEAT_WEIGHTS")
fi

# ---- 4. features of every warped region of the training split (ground-truth boxes included)
FEATURES="$OUT/features_$TRAIN_SPLIT$SUFFIX.h5"
rcnn extract-features "$DATASET" --split "$TRAIN_SPLIT" --proposals "$OUT/proposals_$TRAIN_SPLIT.h5" \
    --backbone "$BACKBONE" --weights "$FEAT_WEIGHTS" --warp-size "$WARP" --padding "$PADDING" \
    --out "$FEATURES" --device "$DEVICE" --no-progress
MODEL="$OUT/model$SUFFIX"

# ---- 5. one linear SVM per class with hard-negative mining, then the box regressors (one model dir)
rcnn train-svm --features "$FEATURES" --proposals "$OUT/proposals_$TRAIN_SPLIT.h5" --out "$MODEL" \
    ${MODEL_WEIGHTS[@]+"${MODEL_WEIGHTS[@]}"} --no-progress
rcnn train-bbox --features "$FEATURES" --proposals "$OUT/proposals_$TRAIN_SPLIT.h5" --out "$MODEL" \
    ${MODEL_WEIGHTS[@]+"${MODEL_WEIGHTS[@]}"} --no-progress

# ---- 6. detect on the test split with its precomputed proposals: JSON lines + drawn images
rcnn detect "$DATASET" --split "$TEST_SPLIT" --model "$MODEL" --proposals "$OUT/proposals_$TEST_SPLIT.h5" \
    --out "$OUT/detections_$TEST_SPLIT$SUFFIX.jsonl" --draw "$OUT/drawn$SUFFIX" --device "$DEVICE" --no-progress

# ---- 7. evaluate: PASCAL VOC 2007 (11-point) and VOC 2012 (area) AP, tables, JSON, PR curves
for metric in $METRICS; do
    rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/detections_$TEST_SPLIT$SUFFIX.jsonl" \
        --metric "$metric" --json "$OUT/eval_$metric$SUFFIX.json" --plot "$OUT/pr_$metric$SUFFIX"
done

show() { printf '  %-42s %s\n' "$1" "$2"; }
echo
echo "R-CNN stage chain done. Outputs in $OUT (each with a *.config.json record beside it):"
show "proposals_$TRAIN_SPLIT.h5 proposals_$TEST_SPLIT.h5" "selective-search boxes (rcnn propose)"
show "recall_$TEST_SPLIT.json recall_plots/" "proposal recall, MABO and recall curves"
[[ "$FINETUNE" == 1 ]] && show "finetune/model.safetensors" "fine-tuned backbone (rcnn finetune)"
show "features_$TRAIN_SPLIT$SUFFIX.h5" "warped-region features (rcnn extract-features)"
show "model$SUFFIX/" "SVMs, box regressors, config.json (rcnn detect --model)"
show "detections_$TEST_SPLIT$SUFFIX.jsonl" "one JSON line per test image; drawn$SUFFIX/: boxes drawn"
show "eval_voc07$SUFFIX.json eval_voc12$SUFFIX.json" "AP per class and mAP; pr_voc07$SUFFIX/ pr_voc12$SUFFIX/: PR curves"
