#!/usr/bin/env bash
# Sample pieces from a trained Museformer with the KV-cached decoder and write MIDI + token files.
#
# Usage:  CHECKPOINT=ckpt.pt DATA_BIN=data-bin/NAME [VAR=value ...] bash run_scripts/sample.sh [museformer-sample flags]
# Extra arguments go to museformer-sample last, so they override the flags below (see `museformer-sample --help`).
#
#   # 4 unconditional pieces with the original's settings (top-k 8, temperature 1, 1,024..20,480 tokens)
#   CHECKPOINT=checkpoints/museformer/checkpoint_best.pt DATA_BIN=data-bin/lmd6remi bash run_scripts/sample.sh
#   # continue the first 8 bars of a song, 2 continuations, up to 64 bars (well-formed REMIGEN: grammar mask on)
#   CHECKPOINT=... DATA_BIN=... NUM_SAMPLES=2 bash run_scripts/sample.sh --prompt-midi song.mid --prompt-bars 8 \
#       --max-bars 64
#   # 8 pieces of exactly 16 bars in 3/4 at 120 BPM for piano, guitar, bass and drums, sampled together in bf16
#   CHECKPOINT=... DATA_BIN=... NUM_SAMPLES=8 BATCH_SIZE=8 MIN_TOKENS=0 bash run_scripts/sample.sh \
#       --instruments 0,25,33,128 --time-signature 3/4 --tempo 120 --bars 16 --dtype bf16
#
# Variables:
#   CHECKPOINT               fairseq checkpoint of a museformer_lm model (required)
#   DATA_BIN                 the data dir the model was trained on: dict.txt + tokenizer.json (required)
#   OUT=samples              output folder (sample_NNN.mid, sample_NNN.txt)
#   NUM_SAMPLES=4            pieces to generate
#   BATCH_SIZE=1             pieces sampled together
#   TOP_K=8                  top-k sampling (the original's value)
#   TEMPERATURE=1.0          softmax temperature
#   MIN_TOKENS=1024          no end of song before this many tokens (the original's --min-len)
#   MAX_LENGTH=20480         longest piece in tokens (the original's --max-len-b; MAX_TOKENS is the old name)
#   SEED=1                   random seed: the same seed gives the same pieces
#   DEVICE=auto              auto | cpu | cuda (auto: cuda when torch sees a GPU)
#   THREADS=                 torch CPU threads (--threads); empty = all cores
#   SAMPLE=museformer-sample the command (falls back to `python -m museformer_tools.sample`)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

require_var CHECKPOINT "path/to/checkpoint.pt"
require_var DATA_BIN "data-bin/NAME"
OUT="${OUT:-samples}"
NUM_SAMPLES="${NUM_SAMPLES:-4}"
BATCH_SIZE="${BATCH_SIZE:-1}"
TOP_K="${TOP_K:-8}"
TEMPERATURE="${TEMPERATURE:-1.0}"
MIN_TOKENS="${MIN_TOKENS:-1024}"
MAX_LENGTH="${MAX_LENGTH:-${MAX_TOKENS:-20480}}"
SEED="${SEED:-1}"
DEVICE="${DEVICE:-auto}"
THREADS="${THREADS:-}"
command_or_module SAMPLE museformer-sample museformer_tools.sample

# shellcheck disable=SC2206  # SAMPLE may be a command with arguments
cmd=($SAMPLE "$CHECKPOINT" --data "$DATA_BIN" --out "$OUT"
     --num-samples "$NUM_SAMPLES" --batch-size "$BATCH_SIZE" --top-k "$TOP_K" --temperature "$TEMPERATURE"
     --min-tokens "$MIN_TOKENS" --max-length "$MAX_LENGTH" --seed "$SEED" --device "$DEVICE"
     ${THREADS:+--threads "$THREADS"} "$@")
echo "+ $(printf '%q ' "${cmd[@]}")"
exec "${cmd[@]}"
