#!/usr/bin/env bash
# Perplexity of a checkpoint on the first L tokens of every song, for several L in one run (spec §6.1).
#
# Usage:  CHECKPOINT=ckpt.pt DATA_BIN=data-bin/NAME [VAR=value ...] bash run_scripts/eval_ppl.sh [museformer-eval-ppl flags]
#   CHECKPOINT=checkpoints/museformer/checkpoint_best.pt DATA_BIN=data-bin/lmd6remi bash run_scripts/eval_ppl.sh
#   CHECKPOINT=ckpt.pt DATA_BIN=data-bin/demo LENGTHS=256,1024 SPLIT=valid bash run_scripts/eval_ppl.sh --batch-size 4
# Prints a table (loss in bits/token, ppl = 2^loss) and writes JSON {L: {loss, ppl, tokens, songs, ...}}.
# Same number as `fairseq-validate DATA --task museformer_lm --path CKPT --valid-subset test --truncate-test L`.
#
# Variables:
#   CHECKPOINT               checkpoint .pt written by fairseq-train / run_scripts/train.sh (required)
#   DATA_BIN                 the binarised data dir (dict.txt, SPLIT.bin/.idx) (required)
#   SPLIT=test               split to score (train | valid | test)
#   LENGTHS=1024,5120,10240  truncation lengths in tokens (the paper's Table 1)
#   OUT_JSON=<checkpoint dir>/ppl_<split>.json   where the JSON goes
#   DEVICE=auto              cpu | cuda | auto (cuda when torch sees a GPU)
#   EVAL_PPL=museformer-eval-ppl   the command (falls back to `python -m museformer_tools.eval_ppl`)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

require_var CHECKPOINT "path/to/checkpoint.pt"
require_var DATA_BIN "data-bin/NAME"
SPLIT="${SPLIT:-test}"
LENGTHS="${LENGTHS:-1024,5120,10240}"
OUT_JSON="${OUT_JSON:-$(dirname "$CHECKPOINT")/ppl_${SPLIT}.json}"
DEVICE="${DEVICE:-auto}"
command_or_module EVAL_PPL museformer-eval-ppl museformer_tools.eval_ppl

# shellcheck disable=SC2206  # EVAL_PPL may be a command with arguments
cmd=($EVAL_PPL "$CHECKPOINT" --data "$DATA_BIN" --split "$SPLIT" --lengths "$LENGTHS" --json "$OUT_JSON"
     --device "$DEVICE" "$@")
echo "+ $(printf '%q ' "${cmd[@]}")"
exec "${cmd[@]}"
