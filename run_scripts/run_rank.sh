#!/usr/bin/env bash
# One rank of a multi-process fairseq-train run, started by torchrun from run_scripts/train.sh.
#
# torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts; this
# wrapper turns them into fairseq flags and runs fairseq-train in this process (--distributed-no-spawn), because
# fairseq's own spawn path counts CUDA devices and cannot start CPU workers.
#
# Variables (exported by train.sh):
#   DEVICE=cpu               cpu -> gloo backend; cuda -> nccl backend on GPU LOCAL_RANK
#   FAIRSEQ_TRAIN=fairseq-train   the fairseq-train command
set -euo pipefail

DEVICE="${DEVICE:-cpu}"
FAIRSEQ_TRAIN="${FAIRSEQ_TRAIN:-fairseq-train}"
: "${RANK:?run_rank.sh is started by torchrun (RANK is not set); use run_scripts/train.sh}"
: "${WORLD_SIZE:?run_rank.sh is started by torchrun (WORLD_SIZE is not set); use run_scripts/train.sh}"
LOCAL_RANK="${LOCAL_RANK:-0}"

dist=(--distributed-rank "$RANK" --distributed-world-size "$WORLD_SIZE"
      --distributed-init-method env:// --distributed-no-spawn)
if [[ "$DEVICE" == "cuda" ]]; then
  dist+=(--distributed-backend nccl --device-id "$LOCAL_RANK")
else
  dist+=(--distributed-backend gloo)
fi

if [[ "$RANK" == "0" ]]; then
  echo "+ [rank 0 of $WORLD_SIZE] $(printf '%q ' "$FAIRSEQ_TRAIN" "$@" "${dist[@]}")"
fi
exec "$FAIRSEQ_TRAIN" "$@" "${dist[@]}"
