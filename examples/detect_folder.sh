#!/usr/bin/env bash
# Detection as a Unix pipeline over a folder of images:
#
#   find DIR -name '*.jpg' | rcnn detect --model M - | tee detections.jsonl | jq ...   (one line per image, streamed)
#   <test image paths>     | rcnn detect --model M - | rcnn evaluate VOC_ROOT --split test --detections -
#
# `rcnn detect` reads image paths from stdin ('-') and writes one JSON line per image as soon as it
# is done: {"image_id": ..., "detections": [{"label", "score", "box": [x1, y1, x2, y2]}, ...]};
# logs and progress go to stderr, so the detections can be piped on. The same command detects with
# every kind of run (it reads the run's kind from its config.json).
#
# Usage:  examples/detect_folder.sh [VOC_ROOT] [OUT_DIR] [MODEL]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": the built-in shapes data, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/detect_folder).
#   MODEL     an R-CNN model directory (rcnn train-svm / rcnn pipeline) or a `rcnn fast train` /
#             `rcnn faster train` run directory (also read from $MODEL). None: a small R-CNN is
#             trained on VOC_ROOT first with `rcnn pipeline` (LIMIT proposals, WARP-pixel regions).
#
# Settings (environment variables):
#   IMAGES        the folder searched (default: VOC_ROOT/JPEGImages, every split)
#   TEST_SPLIT=test  the split evaluated through the pipe (skipped when VOC_ROOT has no such split)
#   SCORE=0.5     detections at least this confident are listed in the summary
#   JQ=jq         the jq program; without it the summary is made by python3 instead
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256 LIMIT=100 WARP=64   (data / model when none given)
#   DEVICE=auto
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/detect_folder}"
MODEL="${3:-${MODEL:-}}"
TEST_SPLIT="${TEST_SPLIT:-test}"
SCORE="${SCORE:-0.5}"
JQ="${JQ:-jq}"
DEVICE="${DEVICE:-auto}"

mkdir -p "$OUT"

# ---- 0. data: the user's VOC root, or the built-in shapes data
if [[ -z "$DATASET" ]]; then
    DATASET="$OUT/data"
    if [[ ! -f "$DATASET/ImageSets/Main/$TEST_SPLIT.txt" ]]; then
        rcnn data make-shapes "$DATASET" --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" \
            --size "${IMAGE_SIZE:-256}"
    fi
fi
IMAGES="${IMAGES:-$DATASET/JPEGImages}"

# ---- 1. a model: the one given, or a small R-CNN trained on the dataset's trainval split
if [[ -z "$MODEL" ]]; then
    WARP="${WARP:-64}"
    rcnn pipeline "$DATASET" --out "$OUT/rcnn_run" --defaults classic --train-split "${TRAIN_SPLIT:-trainval}" --test-split "$TEST_SPLIT" \
        --limit "${LIMIT:-100}" --warp-size "$WARP" --padding "$(( (WARP + 5) / 10 ))" --device "$DEVICE" --no-progress
    MODEL="$OUT/rcnn_run/model"
fi
DETECT=(rcnn detect)  # one command for every kind of run (R-CNN model, Fast or Faster R-CNN run)

# summarise one JSON line per image: "image_id <TAB> N boxes <TAB> label score%, ..." (score >= SCORE)
per_image() {
    if command -v "$JQ" >/dev/null 2>&1; then
        "$JQ" -r --unbuffered --argjson t "$SCORE" '"\(.image_id)\t\(.detections | length) boxes\t"
            + ([.detections[] | select(.score >= $t) | "\(.label) \(.score * 100 | round)%"] | join(", "))'
    else
        python3 -u -c '
import json, sys
t = float(sys.argv[1])
for line in sys.stdin:
    d = json.loads(line)
    good = ", ".join("%s %d%%" % (x["label"], round(x["score"] * 100)) for x in d["detections"] if x["score"] >= t)
    print("%s\t%d boxes\t%s" % (d["image_id"], len(d["detections"]), good), flush=True)' "$SCORE"
    fi
}
# objects per class over the whole file (score >= SCORE): "label <TAB> count"
per_class() {
    if command -v "$JQ" >/dev/null 2>&1; then
        "$JQ" -rs --argjson t "$SCORE" '[.[].detections[] | select(.score >= $t) | .label]
            | group_by(.) | map("\(.[0])\t\(length)") | .[]'
    else
        python3 -c '
import collections, json, sys
t = float(sys.argv[1])
n = collections.Counter(x["label"] for line in sys.stdin for x in json.loads(line)["detections"] if x["score"] >= t)
for label in sorted(n):
    print("%s\t%d" % (label, n[label]))' "$SCORE"
    fi
}
command -v "$JQ" >/dev/null 2>&1 || echo "($JQ not found: summarising with python3)" >&2

# ---- 2. every image under IMAGES, streamed through the detector; the JSON lines are kept (tee)
echo "== ${DETECT[*]} over $IMAGES (score >= $SCORE listed)"
find "$IMAGES" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort \
    | "${DETECT[@]}" --model "$MODEL" - --draw "$OUT/drawn" --device "$DEVICE" --no-progress \
    | tee "$OUT/detections.jsonl" | per_image | tee "$OUT/summary.tsv"
echo "== objects per class (score >= $SCORE)"
per_class < "$OUT/detections.jsonl" | tee "$OUT/per_class.tsv"

# ---- 3. detect straight into evaluate: no detections file at all (VOC images are <id>.jpg)
LIST="$DATASET/ImageSets/Main/$TEST_SPLIT.txt"
if [[ -f "$LIST" ]]; then
    echo "== ${DETECT[*]} | rcnn evaluate on the $TEST_SPLIT split"
    sed "s|.*|$DATASET/JPEGImages/&.jpg|" "$LIST" \
        | "${DETECT[@]}" --model "$MODEL" - --device "$DEVICE" --no-progress \
        | rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections - --metric voc07 --json "$OUT/eval_$TEST_SPLIT.json"
fi

show() { printf '  %-42s %s\n' "$1" "$2"; }
echo
echo "Done. Outputs in $OUT:"
show "detections.jsonl" "one JSON line per image found under $IMAGES"
show "summary.tsv" "per image: id, number of boxes, the boxes scoring >= $SCORE"
show "per_class.tsv" "boxes scoring >= $SCORE per class; drawn/: the images with the boxes"
[[ -f "$LIST" ]] && show "eval_$TEST_SPLIT.json" "VOC07 AP per class and mAP of the piped detections"
[[ -d "$OUT/rcnn_run" ]] && show "rcnn_run/" "the R-CNN trained for this example (model/, metrics.json)"
exit 0
