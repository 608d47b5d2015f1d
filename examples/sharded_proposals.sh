#!/usr/bin/env bash
# Region proposals of a large dataset on N processes (or N machines): one shard each, then merge.
#
#   rcnn propose DATASET --split S --out OUT/shard_K.h5 --shard K/N     (K = 0 .. N-1, in parallel)
#   rcnn merge-proposals OUT/shard_*.h5 --out OUT/proposals_S.h5        (the unsharded run's order)
#
# Each shard is resumable on its own (rerun the same command after a kill). On a cluster, run the
# shards as an array job instead: examples/slurm_proposals.sbatch.
#
# Usage:  examples/sharded_proposals.sh [VOC_ROOT] [OUT_DIR]
# Settings: NPROC=2 (shards run at once here), SPLIT=trainval, LIMIT=2000, MAX_SIZE=500,
#           TRAIN_IMAGES=200 TEST_IMAGES=50 IMAGE_SIZE=256 (the built-in data when no VOC_ROOT)
set -euo pipefail

DATASET="${1:-}"
OUT="${2:-runs/sharded_proposals}"
NPROC="${NPROC:-2}"
SPLIT="${SPLIT:-trainval}"
mkdir -p "$OUT"
if [[ -z "$DATASET" ]]; then
    DATASET="$OUT/data"
    [[ -f "$DATASET/ImageSets/Main/$SPLIT.txt" ]] || rcnn data make-shapes "$DATASET" \
        --train "${TRAIN_IMAGES:-200}" --test "${TEST_IMAGES:-50}" --size "${IMAGE_SIZE:-256}"
fi

pids=()
for ((k = 0; k < NPROC; k++)); do
    rcnn propose "$DATASET" --split "$SPLIT" --out "$OUT/shard_$k.h5" --shard "$k/$NPROC" \
        --limit "${LIMIT:-2000}" --max-size "${MAX_SIZE:-500}" --workers 1 --no-progress &
    pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done   # a failed shard stops the script (set -e)

shards=()
for ((k = 0; k < NPROC; k++)); do shards+=("$OUT/shard_$k.h5"); done
rcnn merge-proposals "${shards[@]}" --out "$OUT/proposals_$SPLIT.h5"
echo "proposals of every $SPLIT image: $OUT/proposals_$SPLIT.h5 (from $NPROC shards)"
