#!/usr/bin/env bash
# MIDI folder -> fairseq data dir for `fairseq-train --task museformer_lm` (encode -> split -> binarise).
#
# Usage:  MIDI_DIR=midi/ DATA_BIN=data-bin/NAME [VAR=value ...] bash run_scripts/prepare_data.sh [museformer-prep all flags]
# Extra arguments go to `museformer-prep all` last (see `museformer-prep all --help`), e.g.
#   MIDI_DIR=demo_out/midi DATA_BIN=data-bin/bach bash run_scripts/prepare_data.sh
#   MIDI_DIR=lmd6/midi DATA_BIN=data-bin/lmd6remi INSTRUMENTS=lmd6 NORMALIZE_PITCH=1 IGNORE_TS=1 \
#       bash run_scripts/prepare_data.sh --lists data/meta     # the original's train/valid/test file lists
#
# Variables:
#   MIDI_DIR                 input: *.mid / *.midi, searched recursively (required)
#   DATA_BIN                 output: {train,valid,test}.{bin,idx}, dict.txt, tokenizer.json, tokens/, split/ (required)
#   ENCODING=remigen2        remigen2 = tempo once per bar (the paper's setting); remigen = per onset
#   INSTRUMENTS=general      general = every GM program; lmd6 = the paper's six tracks
#   NORMALIZE_PITCH=0        1 = transpose to C major / A minor (the original README's flag)
#   REMOVE_EMPTY_BARS=1      1 = drop leading/trailing empty bars (as the original README)
#   IGNORE_TS=0              1 = no time-signature tokens (only right for all-4/4 data such as LMD6)
#   WORKERS=$(nproc)         processes for encoding and fairseq-preprocess
#   PREP=museformer-prep     the command (falls back to `python -m data_prep` from a plain checkout)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

require_var MIDI_DIR "path/to/midi_folder"
require_var DATA_BIN "data-bin/NAME"
ENCODING="${ENCODING:-remigen2}"
INSTRUMENTS="${INSTRUMENTS:-general}"
NORMALIZE_PITCH="${NORMALIZE_PITCH:-0}"
REMOVE_EMPTY_BARS="${REMOVE_EMPTY_BARS:-1}"
IGNORE_TS="${IGNORE_TS:-0}"
WORKERS="${WORKERS:-$(nproc)}"
command_or_module PREP museformer-prep data_prep
if [[ ! -d "$MIDI_DIR" ]]; then
  echo "prepare_data.sh: MIDI_DIR=$MIDI_DIR is not a folder; set MIDI_DIR to a folder of .mid files" >&2
  exit 2
fi

flags=(--encoding "$ENCODING" --instruments "$INSTRUMENTS" --workers "$WORKERS")
[[ "$NORMALIZE_PITCH" == 1 ]] && flags+=(--normalize-pitch)
[[ "$REMOVE_EMPTY_BARS" == 1 ]] && flags+=(--remove-empty-bars)
[[ "$IGNORE_TS" == 1 ]] && flags+=(--ignore-ts)

# shellcheck disable=SC2206  # PREP may hold several words ("python -m data_prep")
cmd=($PREP all "$MIDI_DIR" "$DATA_BIN" "${flags[@]}" "$@")
echo "+ $(printf '%q ' "${cmd[@]}")"
exec "${cmd[@]}"
