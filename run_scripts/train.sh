#!/usr/bin/env bash
# Train a Museformer (or a baseline) with fairseq-train: 1 CPU process, N GPUs, several nodes, or N CPU processes.
#
# Usage:  DATA_BIN=data-bin/NAME [VAR=value ...] bash run_scripts/train.sh [extra fairseq-train arguments]
# Extra arguments go to fairseq-train last, so they override the flags below (e.g. --batch-size 1, --dropout 0.2).
#
#   # paper setting, 4 GPUs on one node (spec §4.1: 4 GPUs -> 4 songs per update)
#   DATA_BIN=data-bin/lmd6remi NPROC=4 bash run_scripts/train.sh --batch-size 1
#   # 2 nodes x 8 GPUs: run this on every node, with NODE_RANK=0 on the node whose address is MASTER_ADDR
#   DATA_BIN=... NNODES=2 NODE_RANK=0 NPROC=8 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash run_scripts/train.sh
#   # smoke run: 2 CPU processes (gloo), tiny model, 20 updates
#   DATA_BIN=... DEVICE=cpu NPROC=2 ARCH=museformer_lm_tiny MAX_UPDATE=20 MAX_TOKENS=4096 bash run_scripts/train.sh
#
# Variables (the defaults reproduce the paper, spec §4.1; the batch is set by MAX_TOKENS per process):
#   DATA_BIN                 binarised data dir from `museformer-prep all` (required)
#   SAVE_DIR=checkpoints/museformer   checkpoints; a run restarts from SAVE_DIR/checkpoint_last.pt when it exists
#   ARCH=museformer_lm       model architecture: museformer_lm, museformer_lm_tiny, museformer_linear_lm, ...
#   TASK=museformer_lm       fairseq task (from the plugin)
#   CRITERION=cross_entropy  loss (fairseq's token-level cross entropy, as the paper)
#   USER_DIR=<repo>/museformer_plugin   the fairseq --user-dir plugin
#   DEVICE=auto              cpu | cuda | auto (cuda when torch sees a GPU)
#   NPROC=1                  processes per node: GPUs per node on cuda, worker processes on cpu (gloo)
#   NNODES=1                 number of nodes
#   NODE_RANK=0              rank of this node, 0..NNODES-1
#   MASTER_ADDR=127.0.0.1    address of node 0 (multi-process/multi-node runs only)
#   MASTER_PORT=29500        free TCP port on node 0
#   PRECISION=auto           fp32 | fp16 | bf16 | auto (fp16 on cuda, fp32 on cpu); bf16 needs no loss scaling
#   MAX_TOKENS=15360         tokens per batch per process (one truncated paper-length song)
#   BATCH_SIZE=              songs per batch per process; empty = no cap (the paper used 1)
#   UPDATE_FREQ=1            gradient accumulation steps
#   LR=5e-4                  peak learning rate
#   WARMUP=16000             inverse_sqrt linear warm-up updates (from lr 0)
#   WEIGHT_DECAY=0.01        Adam weight decay
#   CLIP_NORM=0              gradient clipping (0 = off, as the paper)
#   MAX_UPDATE=1000000       stop after this many updates
#   TRUNCATE_TRAIN=15360     keep the first N tokens of each training song
#   TRUNCATE_VALID=10240     keep the first N tokens of each validation song
#   TOKENS_PER_SAMPLE=100000 maximum sequence length the model accepts
#   SAVE_INTERVAL_UPDATES=5000      checkpoint + validation every N updates
#   VALIDATE_INTERVAL_UPDATES=$SAVE_INTERVAL_UPDATES
#   KEEP_INTERVAL_UPDATES=10 keep only the last N update checkpoints (-1 = all; 200 paper checkpoints are ~40 GB)
#   SEED=1                   random seed
#   LOG_INTERVAL=100         log training stats every N updates
#   LOG_FORMAT=simple        simple | json | tqdm | none
#   TENSORBOARD_DIR=$SAVE_DIR/tensorboard   tensorboard logs; empty = off
#   NUM_WORKERS=1            data-loader workers per process
#   FAIRSEQ_TRAIN=fairseq-train     the fairseq-train command
#   TORCHRUN=torchrun        the torchrun command (multi-process runs)
#   DRY_RUN=0                1 = print the command and exit
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
require_var DATA_BIN "data-bin/NAME"
SAVE_DIR="${SAVE_DIR:-checkpoints/museformer}"
ARCH="${ARCH:-museformer_lm}"
TASK="${TASK:-museformer_lm}"
CRITERION="${CRITERION:-cross_entropy}"
USER_DIR="${USER_DIR:-$(dirname "$SCRIPT_DIR")/museformer_plugin}"
DEVICE="${DEVICE:-auto}"
NPROC="${NPROC:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
PRECISION="${PRECISION:-auto}"
MAX_TOKENS="${MAX_TOKENS:-15360}"
BATCH_SIZE="${BATCH_SIZE:-}"
UPDATE_FREQ="${UPDATE_FREQ:-1}"
LR="${LR:-5e-4}"
WARMUP="${WARMUP:-16000}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.01}"
CLIP_NORM="${CLIP_NORM:-0}"
MAX_UPDATE="${MAX_UPDATE:-1000000}"
TRUNCATE_TRAIN="${TRUNCATE_TRAIN:-15360}"
TRUNCATE_VALID="${TRUNCATE_VALID:-10240}"
TOKENS_PER_SAMPLE="${TOKENS_PER_SAMPLE:-100000}"
SAVE_INTERVAL_UPDATES="${SAVE_INTERVAL_UPDATES:-5000}"
VALIDATE_INTERVAL_UPDATES="${VALIDATE_INTERVAL_UPDATES:-$SAVE_INTERVAL_UPDATES}"
KEEP_INTERVAL_UPDATES="${KEEP_INTERVAL_UPDATES:-10}"
SEED="${SEED:-1}"
LOG_INTERVAL="${LOG_INTERVAL:-100}"
LOG_FORMAT="${LOG_FORMAT:-simple}"
TENSORBOARD_DIR="${TENSORBOARD_DIR-$SAVE_DIR/tensorboard}"
NUM_WORKERS="${NUM_WORKERS:-1}"
FAIRSEQ_TRAIN="${FAIRSEQ_TRAIN:-fairseq-train}"
TORCHRUN="${TORCHRUN:-torchrun}"
DRY_RUN="${DRY_RUN:-0}"

if [[ "$DEVICE" == "auto" ]]; then
  if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
if [[ "$PRECISION" == "auto" ]]; then
  if [[ "$DEVICE" == "cuda" ]]; then PRECISION=fp16; else PRECISION=fp32; fi
fi
if [[ "$DEVICE" != "cpu" && "$DEVICE" != "cuda" ]]; then
  echo "train.sh: DEVICE must be cpu, cuda or auto; got '$DEVICE'" >&2; exit 2
fi
if [[ "$DEVICE" == "cpu" && "$PRECISION" != "fp32" ]]; then  # works (museformer_plugin/fairseq_compat.py), rarely pays
  echo "train.sh: note: PRECISION=$PRECISION on CPU trains, but usually slower than fp32 (half-precision kernels are a GPU thing)" >&2
fi
if [[ ! -f "$DATA_BIN/dict.txt" && "$DRY_RUN" != "1" ]]; then
  echo "train.sh: $DATA_BIN/dict.txt not found; build the data dir with \`museformer-prep all MIDI_DIR $DATA_BIN\`" >&2
  exit 2
fi

for trunc in TRUNCATE_TRAIN TRUNCATE_VALID; do
  if [[ "$MAX_TOKENS" -lt "${!trunc}" ]]; then
    echo "train.sh: note: MAX_TOKENS=$MAX_TOKENS < $trunc=${!trunc}: a training song longer than MAX_TOKENS stops" \
         "the run with an error, a validation song that long is skipped; set $trunc <= MAX_TOKENS to keep them" >&2
  fi
done

args=(
  "$DATA_BIN" --user-dir "$USER_DIR" --task "$TASK" --arch "$ARCH" --criterion "$CRITERION"
  --tokens-per-sample "$TOKENS_PER_SAMPLE" --truncate-train "$TRUNCATE_TRAIN" --truncate-valid "$TRUNCATE_VALID"
  --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-9 --weight-decay "$WEIGHT_DECAY" --clip-norm "$CLIP_NORM"
  --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP"
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1
  --max-update "$MAX_UPDATE" --seed "$SEED" --num-workers "$NUM_WORKERS"
  # The paper checkpoints and validates by updates only; end-of-epoch saving/validation is switched off (spec §4.1).
  --save-dir "$SAVE_DIR" --save-interval-updates "$SAVE_INTERVAL_UPDATES"
  --validate-interval-updates "$VALIDATE_INTERVAL_UPDATES" --keep-interval-updates "$KEEP_INTERVAL_UPDATES"
  --save-interval 1000000000 --validate-interval 1000000000 --skip-invalid-size-inputs-valid-test
  --log-interval "$LOG_INTERVAL" --log-format "$LOG_FORMAT"
)
[[ -n "$BATCH_SIZE" ]] && args+=(--batch-size "$BATCH_SIZE")
[[ -n "$TENSORBOARD_DIR" ]] && args+=(--tensorboard-logdir "$TENSORBOARD_DIR")
case "$PRECISION" in
  fp32) ;;
  fp16) args+=(--fp16) ;;
  bf16) args+=(--bf16) ;;
  *) echo "train.sh: PRECISION must be fp32, fp16, bf16 or auto; got '$PRECISION'" >&2; exit 2 ;;
esac
if [[ "$DEVICE" == "cpu" ]]; then
  # DDP refuses device_ids on CPU; fairseq's legacy_ddp all-reduces gradients itself.
  args+=(--cpu --ddp-backend legacy_ddp)
fi

WORLD_SIZE_TOTAL=$((NPROC * NNODES))
if [[ "$WORLD_SIZE_TOTAL" -le 1 ]]; then
  cmd=("$FAIRSEQ_TRAIN" "${args[@]}" "$@")
else
  # torchrun starts NPROC processes on this node; run_rank.sh turns its RANK/WORLD_SIZE/LOCAL_RANK into fairseq
  # flags (fairseq's own spawn path counts CUDA devices and cannot start CPU workers).
  export DEVICE FAIRSEQ_TRAIN
  cmd=("$TORCHRUN" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC"
       --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
       --no-python bash "$SCRIPT_DIR/run_rank.sh" "${args[@]}" "$@")
fi

echo "+ DEVICE=$DEVICE PRECISION=$PRECISION WORLD_SIZE=$WORLD_SIZE_TOTAL"
echo "+ $(printf '%q ' "${cmd[@]}")"
if [[ "$DRY_RUN" == "1" ]]; then exit 0; fi
mkdir -p "$SAVE_DIR"
exec "${cmd[@]}"
