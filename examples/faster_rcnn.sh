#!/usr/bin/env bash
# Faster R-CNN: train (RPN + Fast R-CNN head, jointly) -> detect (JSON lines + drawn images)
# -> evaluate (VOC07, VOC12); then its RPN as a proposal method, compared with selective search
# on the same test images (recall at IoU 0.5/0.7 and MABO at the same number of boxes).
#
# Usage:  examples/faster_rcnn.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": the built-in shapes data, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/faster_rcnn).
#
# Settings (environment variables):
#   TRAIN_SPLIT=trainval TEST_SPLIT=test
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   EPOCHS=6 BATCH=2 LR=0.01 WARMUP_ITERS=100 MAX_ITERS (quick checks) RESUME=1 (continue an interrupted run)
#   LR_STEPS              epochs where the lr drops 10x (default: 3/4 of EPOCHS; "" for none)
#   MIN_SIZE / MAX_SIZE   image sides after resizing (shapes data: IMAGE_SIZE; else the CLI's 600 / 1000)
#   ANCHOR_SIZES          e.g. 32,64,128 (default: fitted to the training boxes, --auto-anchors)
#   RPN_TOP_N=300         RPN proposals per test image; LIMIT (selective search boxes kept) defaults to the same
#   METRICS="voc07 voc12"  evaluate metrics (voc07, voc12, coco)
#   BACKBONE=efficientnet_lite0 WEIGHTS=imagenet DEVICE=auto SEED=0
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/faster_rcnn}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
EPOCHS="${EPOCHS:-6}"
LR_STEPS="${LR_STEPS-$( (( EPOCHS >= 4 )) && echo $(( EPOCHS * 3 / 4 )) || true)}"
RPN_TOP_N="${RPN_TOP_N:-300}"
LIMIT="${LIMIT:-$RPN_TOP_N}"
DEVICE="${DEVICE:-auto}"
METRICS="${METRICS:-voc07 voc12}"   # evaluate --metric: voc07 (11-point), voc12 (area), coco
SEED="${SEED:-0}"

mkdir -p "$OUT"

# ---- 0. data: the user's VOC root, or the built-in shapes data
if [[ -z "$DATASET" ]]; then
    DATASET="$OUT/data"
    if [[ ! -f "$DATASET/ImageSets/Main/$TEST_SPLIT.txt" ]]; then
        rcnn data make-shapes "$DATASET" --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
            --size "${IMAGE_SIZE:-256}" --seed "$SEED"
    fi
    MIN_SIZE="${MIN_SIZE:-${IMAGE_SIZE:-256}}"   # the shapes images are small: keep them at their size
fi

# ---- 1. train. Optional flags are collected in an array so that unset settings keep the CLI defaults.
TRAIN_ARGS=(--epochs "$EPOCHS" --lr "${LR:-0.01}" --lr-steps "$LR_STEPS" --batch-size "${BATCH:-2}"
            --warmup-iters "${WARMUP_ITERS:-100}"
            --backbone "${BACKBONE:-efficientnet_lite0}" --weights "${WEIGHTS:-imagenet}"
            --seed "$SEED" --device "$DEVICE")
[[ -n "${MIN_SIZE:-}" ]] && TRAIN_ARGS+=(--min-size "$MIN_SIZE" --max-size "${MAX_SIZE:-$MIN_SIZE}")
[[ -z "${MIN_SIZE:-}" && -n "${MAX_SIZE:-}" ]] && TRAIN_ARGS+=(--max-size "$MAX_SIZE")
[[ -n "${MAX_ITERS:-}" ]] && TRAIN_ARGS+=(--max-iters "$MAX_ITERS")
[[ "${RESUME:-0}" == 1 ]] && TRAIN_ARGS+=(--resume)   # continue an interrupted run of the same settings
if [[ -n "${ANCHOR_SIZES:-}" ]]; then TRAIN_ARGS+=(--anchor-sizes "$ANCHOR_SIZES"); else TRAIN_ARGS+=(--auto-anchors); fi
rcnn faster train "$DATASET" --split "$TRAIN_SPLIT" --out "$OUT/model" "${TRAIN_ARGS[@]}"

# ---- 2. detect on the test split: one JSON line per image, and the images with boxes drawn
rcnn faster detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/model" --device "$DEVICE" \
    --out "$OUT/detections_$TEST_SPLIT.jsonl" --draw "$OUT/drawn" --no-progress

# ---- 3. evaluate: VOC07 (11-point) and VOC12 (area) AP per class, mAP, JSON and PR curves
for metric in $METRICS; do
    rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/detections_$TEST_SPLIT.jsonl" \
        --metric "$metric" --json "$OUT/eval_$metric.json" --plot "$OUT/pr_$metric"
done

# ---- 4. the trained RPN as a proposal method (the same HDF5 store `rcnn propose` always writes;
#         usable by extract-features / fast train), against selective search with as many boxes
rcnn propose "$DATASET" --split "$TEST_SPLIT" --method rpn --model "$OUT/model" --rpn-top-n "$RPN_TOP_N" \
    --device "$DEVICE" --out "$OUT/proposals_rpn_$TEST_SPLIT.h5" --no-progress
rcnn propose "$DATASET" --split "$TEST_SPLIT" --method selective-search --limit "$LIMIT" \
    --max-size "${SS_MAX_SIZE:-500}" --min-box "${MIN_BOX:-16}" --seed "$SEED" \
    --out "$OUT/proposals_ss_$TEST_SPLIT.h5" --no-progress
for method in rpn ss; do
    rcnn proposals recall "$DATASET" --split "$TEST_SPLIT" --proposals "$OUT/proposals_${method}_$TEST_SPLIT.h5" \
        --json "$OUT/recall_$method.json" --plot "$OUT/recall_plots_$method"
done

# ---- 5. one summary: detection mAP and the two proposal methods side by side
python3 - "$OUT" $METRICS <<'EOF'
import json, sys
out, metrics = sys.argv[1], sys.argv[2:]
ev = {m: json.load(open(f"{out}/eval_{m}.json")) for m in metrics}
print("\nFaster R-CNN mAP@0.5: " + ", ".join(f"{m.upper()} {100 * ev[m]['mAP']:.1f}" for m in metrics))
print(f"{'proposals':<18}{'boxes/image':>12}{'recall@0.5':>12}{'recall@0.7':>12}{'MABO':>8}")
for method, name in (("rpn", "RPN"), ("ss", "selective search")):
    r = json.load(open(f"{out}/recall_{method}.json"))
    print(f"{name:<18}{r['boxes_per_image']:>12.0f}{r['recall@0.5']:>12.3f}{r['recall@0.7']:>12.3f}{r['mabo']:>8.3f}")
EOF

show() { printf '  %-42s %s\n' "$1" "$2"; }
echo
echo "Faster R-CNN done. Outputs in $OUT (each with a *.config.json record beside it):"
show "model/" "model.safetensors, config.json, metrics.jsonl (losses per iteration), checkpoint/"
show "detections_$TEST_SPLIT.jsonl" "one JSON line per test image; drawn/: the images with boxes"
show "eval_voc07.json eval_voc12.json" "AP per class and mAP; pr_voc07/ pr_voc12/: PR curves"
show "proposals_rpn_$TEST_SPLIT.h5 proposals_ss_$TEST_SPLIT.h5" "RPN vs selective-search proposals"
show "recall_rpn.json recall_ss.json" "their recall / MABO; recall_plots_rpn/ recall_plots_ss/: curves"
