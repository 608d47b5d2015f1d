#!/usr/bin/env bash
# Data-parallel training with torchrun: NPROC processes, each with its share of every epoch
# (DistributedDataParallel; gloo on the CPU, NCCL with one GPU per process), then detect and
# evaluate with the single-process CLI as usual.
#
#   torchrun --standalone --nproc_per_node N --no-python rcnn faster train ...
#   (equivalently: torchrun --standalone --nproc_per_node N -m rcnn_cli faster train ...)
#
# Only rank 0 writes the run directory (checkpoints, metrics.jsonl, model.safetensors); the others
# train in lockstep. --batch-size is per process: the minibatch of one step is NPROC x BATCH
# images, so an epoch takes 1/NPROC of the steps.
#
# Usage:  examples/torchrun.sh [VOC_ROOT] [OUT_DIR]
#   VOC_ROOT  a VOC-layout dataset; omitted or "": the built-in shapes data, generated into OUT_DIR/data.
#   OUT_DIR   where everything goes (default: runs/torchrun).
#
# Settings (environment variables):
#   NPROC=2            processes (on the CPU, each gets CPU cores / NPROC threads; on GPUs, one GPU each)
#   METHOD=faster      faster (Faster R-CNN) | fast (Fast R-CNN on selective-search proposals)
#   EPOCHS=4 BATCH=2 LR=0.01 WARMUP_ITERS=50 MAX_ITERS (quick checks) DEVICE=auto SEED=0
#   RESUME=1           continue an interrupted OUT_DIR/model (with any number of processes)
#   MIN_SIZE / MAX_SIZE  image sides after resizing (shapes data: IMAGE_SIZE; else the CLI's 600 / 1000)
#   TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256   shapes data only
#   LIMIT=300 MIN_BOX=16   selective-search proposals per image / smallest box (METHOD=fast)
#   TORCHRUN=torchrun   the launcher (e.g. "python -m torch.distributed.run")
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/torchrun}"
NPROC="${NPROC:-2}"
METHOD="${METHOD:-faster}"
TRAIN_SPLIT="${TRAIN_SPLIT:-trainval}"
TEST_SPLIT="${TEST_SPLIT:-test}"
DEVICE="${DEVICE:-auto}"
SEED="${SEED:-0}"
read -r -a LAUNCH <<< "${TORCHRUN:-torchrun}"
case "$METHOD" in fast|faster) ;; *) echo "METHOD must be fast or faster, not '$METHOD'" >&2; exit 2 ;; esac
command -v "${LAUNCH[0]}" >/dev/null || { echo "${LAUNCH[0]} not found (it comes with PyTorch)" >&2; exit 2; }

# CPU threads per process: share the cores instead of every process using all of them
CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo "$NPROC")"
THREADS=$(( CORES / NPROC ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}"

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

TRAIN_ARGS=(--epochs "${EPOCHS:-4}" --batch-size "${BATCH:-2}" --lr "${LR:-0.01}" --warmup-iters "${WARMUP_ITERS:-50}"
            --seed "$SEED" --device "$DEVICE")
[[ -n "${MIN_SIZE:-}" ]] && TRAIN_ARGS+=(--min-size "$MIN_SIZE" --max-size "${MAX_SIZE:-$MIN_SIZE}")
[[ -z "${MIN_SIZE:-}" && -n "${MAX_SIZE:-}" ]] && TRAIN_ARGS+=(--max-size "$MAX_SIZE")
[[ -n "${MAX_ITERS:-}" ]] && TRAIN_ARGS+=(--max-iters "$MAX_ITERS")
[[ "${RESUME:-0}" == 1 ]] && TRAIN_ARGS+=(--resume)   # continue an interrupted run of the same settings

# ---- 1. (Fast R-CNN only) selective-search proposals of both splits, computed once beforehand
DETECT_ARGS=()
if [[ "$METHOD" == fast ]]; then
    for split in "$TRAIN_SPLIT" "$TEST_SPLIT"; do
        rcnn propose "$DATASET" --split "$split" --out "$OUT/proposals_$split.h5" --limit "${LIMIT:-300}" \
            --min-box "${MIN_BOX:-16}" --seed "$SEED" --no-progress
    done
    TRAIN_ARGS+=(--proposals "$OUT/proposals_$TRAIN_SPLIT.h5" --no-progress)
    DETECT_ARGS=(--proposals "$OUT/proposals_$TEST_SPLIT.h5")
else
    TRAIN_ARGS+=(--auto-anchors)
fi

# ---- 2. train with NPROC processes (--standalone: a local rendezvous on a free port)
echo "== $NPROC processes x $OMP_NUM_THREADS threads, batch ${BATCH:-2} per process"
"${LAUNCH[@]}" --standalone --nproc_per_node "$NPROC" --no-python \
    rcnn "$METHOD" train "$DATASET" --split "$TRAIN_SPLIT" --out "$OUT/model" "${TRAIN_ARGS[@]}"

# ---- 3. detect and evaluate in one process, as for any other run
rcnn "$METHOD" detect "$DATASET" --split "$TEST_SPLIT" --model "$OUT/model" ${DETECT_ARGS[@]+"${DETECT_ARGS[@]}"} \
    --device "$DEVICE" --out "$OUT/detections_$TEST_SPLIT.jsonl" --no-progress
rcnn evaluate "$DATASET" --split "$TEST_SPLIT" --detections "$OUT/detections_$TEST_SPLIT.jsonl" \
    --metric voc07 --json "$OUT/eval_voc07.json"

show() { printf '  %-42s %s\n' "$1" "$2"; }
echo
echo "torchrun training done. Outputs in $OUT:"
show "model/" "model.safetensors, config.json (train.world_size = $NPROC), metrics.jsonl"
show "detections_$TEST_SPLIT.jsonl" "one JSON line per test image"
show "eval_voc07.json" "AP per class and mAP"
