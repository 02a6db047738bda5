#!/usr/bin/env bash
# Train every attention preset with the same size, steps and seed, evaluate them at the same lengths, and write a
# markdown table: the paper's Table 1 (spec §6.3) at whatever scale you can afford.
#
# Usage:  DATA_BIN=data-bin/NAME [VAR=value ...] bash run_scripts/compare.sh [fairseq-train flags for every model]
#   DATA_BIN=data-bin/bach SIZE=tiny MAX_UPDATE=300 LENGTHS=256,1024 bash run_scripts/compare.sh
#   DATA_BIN=data-bin/lmd6remi SIZE=paper NPROC=4 MAX_UPDATE=100000 bash run_scripts/compare.sh --batch-size 1
# Every train.sh variable set in the environment (MAX_TOKENS, LR, WARMUP, NPROC, DEVICE, TRUNCATE_TRAIN, ...)
# applies to every model. A finished run is not retrained (fairseq-train stops at once at MAX_UPDATE), so an
# interrupted comparison continues where it stopped.
#
# Variables:
#   DATA_BIN                 binarised data dir from `museformer-prep all` (required)
#   PRESETS="museformer full recent8 no-coarse linear"   models to compare: --attention-scheme presets of
#                            museformer_lm, and `linear` = the museformer_linear_lm baseline
#   SIZE=tiny                tiny (museformer_lm_tiny / museformer_linear_lm_tiny) | paper (4 x 512, spec §4.1)
#   MAX_UPDATE=2000          training updates per model
#   SEED=1                   the same seed for every model
#   LENGTHS=1024,5120,10240  evaluation lengths (tokens)
#   SPLIT=test               evaluation split
#   OUT_DIR=runs/compare     one folder per model (checkpoints, logs, ppl.json)
#   RESULTS_MD=docs/results.md   the markdown table
#   DEVICE=auto              cpu | cuda | auto, for training, evaluation and sampling
#   SE_SAMPLES=4             pieces each model samples for its similarity error (SE) against the SPLIT set's
#                            songs (museformer-analyze se); 0 = no SE column
#   SE_BARS=16               bars per sampled piece (SE uses the bar distances 1..SE_BARS-1 both sides have)
#   SE_MAX_TOKENS=4096       longest sampled piece in tokens
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

require_var DATA_BIN "data-bin/NAME"
export DATA_BIN
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PRESETS="${PRESETS:-museformer full recent8 no-coarse linear}"
SIZE="${SIZE:-tiny}"
export MAX_UPDATE="${MAX_UPDATE:-2000}"
export SEED="${SEED:-1}"
LENGTHS="${LENGTHS:-1024,5120,10240}"
SPLIT="${SPLIT:-test}"
OUT_DIR="${OUT_DIR:-runs/compare}"
RESULTS_MD="${RESULTS_MD:-docs/results.md}"
export DEVICE="${DEVICE:-auto}"
SE_SAMPLES="${SE_SAMPLES:-4}"
SE_BARS="${SE_BARS:-16}"
SE_MAX_TOKENS="${SE_MAX_TOKENS:-4096}"
analyze=(python -m museformer_analysis)  # = museformer-analyze

case "$SIZE" in
  tiny) suffix=_tiny ;;
  paper) suffix= ;;
  *) echo "compare.sh: SIZE must be tiny or paper; got '$SIZE'" >&2; exit 2 ;;
esac

# SE reference: the SPLIT set's token files, as museformer-prep all lays them out (DATA_BIN/tokens/, with the
# split's file list in DATA_BIN/split/lists/). Their statistics are computed once and reused for every model.
reference_json=""
if [[ "$SE_SAMPLES" -gt 0 ]]; then
  list="$DATA_BIN/split/lists/$SPLIT.txt"
  if [[ -f "$list" && -d "$DATA_BIN/tokens" ]]; then
    ref_files=()
    while IFS= read -r rel; do
      [[ -n "$rel" && -f "$DATA_BIN/tokens/$rel.txt" ]] && ref_files+=("$DATA_BIN/tokens/$rel.txt")
    done < "$list"
    positions="$(python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("positions_per_beat", 12))' \
                 "$DATA_BIN/tokenizer.json" 2>/dev/null || echo 12)"
    mkdir -p "$OUT_DIR"
    reference_json="$OUT_DIR/${SPLIT}_stats.json"
    echo "=== SE reference: ${#ref_files[@]} $SPLIT songs of $DATA_BIN/tokens -> $reference_json"
    "${analyze[@]}" stats "${ref_files[@]}" --positions-per-beat "$positions" --json "$reference_json"
  else
    echo "=== no $list or $DATA_BIN/tokens (not made by museformer-prep all?): no SE column"
  fi
fi
sample_device="$DEVICE"
if [[ "$sample_device" == "auto" ]]; then
  sample_device="$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
fi

runs=()
for preset in $PRESETS; do
  if [[ "$preset" == "linear" ]]; then
    arch="museformer_linear_lm$suffix"; model_args=()
  else
    arch="museformer_lm$suffix"; model_args=(--attention-scheme "$preset")
  fi
  run_dir="$OUT_DIR/$preset"
  mkdir -p "$run_dir"
  echo "=== $preset: train $arch for $MAX_UPDATE updates -> $run_dir"
  SAVE_DIR="$run_dir" ARCH="$arch" bash "$SCRIPT_DIR/train.sh" "${model_args[@]}" "$@" 2>&1 | tee -a "$run_dir/train.log"
  echo "=== $preset: perplexity at $LENGTHS"
  CHECKPOINT="$run_dir/checkpoint_best.pt" OUT_JSON="$run_dir/ppl.json" SPLIT="$SPLIT" LENGTHS="$LENGTHS" \
    bash "$SCRIPT_DIR/eval_ppl.sh" 2>&1 | tee "$run_dir/eval.log"
  rm -f "$run_dir/se.json"
  if [[ -n "$reference_json" ]]; then
    echo "=== $preset: $SE_SAMPLES samples of $SE_BARS bars -> SE against the $SPLIT set"
    rm -rf "$run_dir/samples"
    # A model that cannot be sampled (or whose samples have no notes) gets no SE; the comparison goes on.
    if museformer-sample "$run_dir/checkpoint_best.pt" --data "$DATA_BIN" --out "$run_dir/samples" \
         --num-samples "$SE_SAMPLES" --max-bars "$SE_BARS" --max-length "$SE_MAX_TOKENS" --grammar-mask \
         --seed "$SEED" --device "$sample_device" 2>&1 | tee "$run_dir/sample.log" \
       && "${analyze[@]}" se "$reference_json" "$run_dir/samples" --positions-per-beat "$positions" \
            --json "$run_dir/se.json" 2>&1 | tee "$run_dir/se.log"; then
      :
    else
      echo "=== $preset: no SE (see $run_dir/sample.log and $run_dir/se.log)"
      rm -f "$run_dir/se.json"
    fi
  fi
  runs+=("$preset=$run_dir")
done

# The command to record on the results page: this script's settings and every train.sh variable that was set.
settings=""
for var in SIZE MAX_UPDATE SEED LENGTHS PRESETS SE_SAMPLES SE_BARS DEVICE NPROC PRECISION MAX_TOKENS BATCH_SIZE \
           UPDATE_FREQ LR WARMUP TRUNCATE_TRAIN TRUNCATE_VALID SAVE_INTERVAL_UPDATES; do
  [[ -n "${!var:-}" ]] && settings+="$var=$(printf '%q' "${!var}") "
done
cmd_line="DATA_BIN=$(printf '%q' "$DATA_BIN") ${settings}bash run_scripts/compare.sh $(printf '%q ' "$@")"
table=(python -m museformer_tools.compare_table --out "$RESULTS_MD" --command "$cmd_line" "${runs[@]}")
echo "+ $(printf '%q ' "${table[@]}")"
PYTHONPATH="$(dirname "$SCRIPT_DIR")${PYTHONPATH:+:$PYTHONPATH}" "${table[@]}"
