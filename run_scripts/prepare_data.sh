#!/usr/bin/env bash
# MIDI folder -> fairseq data dir for `fairseq-train --task museformer_lm` (encode -> split -> binarise).
# Everything after the script name is passed on to `museformer-prep all`, e.g.
#   bash run_scripts/prepare_data.sh --lists data/meta          # the original's train/valid/test file lists
#   MIDI_DIR=lmd6/midi DATA_BIN=data-bin/lmd6remi INSTRUMENTS=lmd6 NORMALIZE_PITCH=1 bash run_scripts/prepare_data.sh
set -euo pipefail

MIDI_DIR=${MIDI_DIR:-demo_out/midi}         # input: *.mid / *.midi, searched recursively
DATA_BIN=${DATA_BIN:-data-bin/demo}         # output: {train,valid,test}.{bin,idx}, dict.txt, tokenizer.json, tokens/, split/
ENCODING=${ENCODING:-remigen2}              # remigen2 = tempo once per bar (the paper's setting); remigen = per onset
INSTRUMENTS=${INSTRUMENTS:-general}         # general = every GM program; lmd6 = the paper's six tracks
NORMALIZE_PITCH=${NORMALIZE_PITCH:-0}       # 1 = transpose to C major / A minor (the original README's flag)
REMOVE_EMPTY_BARS=${REMOVE_EMPTY_BARS:-1}   # 1 = drop leading/trailing empty bars (as the original README)
IGNORE_TS=${IGNORE_TS:-0}                   # 1 = no time-signature tokens (only right for all-4/4 data such as LMD6)
WORKERS=${WORKERS:-$(nproc)}                # processes for encoding and fairseq-preprocess
PREP=${PREP:-museformer-prep}               # or "python -m data_prep" from a plain checkout

flags=(--encoding "$ENCODING" --instruments "$INSTRUMENTS" --workers "$WORKERS")
[[ "$NORMALIZE_PITCH" == 1 ]] && flags+=(--normalize-pitch)
[[ "$REMOVE_EMPTY_BARS" == 1 ]] && flags+=(--remove-empty-bars)
[[ "$IGNORE_TS" == 1 ]] && flags+=(--ignore-ts)

echo "+ $PREP all $MIDI_DIR $DATA_BIN ${flags[*]} $*"
# shellcheck disable=SC2086  # PREP may hold two words ("python -m data_prep")
$PREP all "$MIDI_DIR" "$DATA_BIN" "${flags[@]}" "$@"
