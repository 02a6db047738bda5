#!/usr/bin/env bash
# `make demo`: real music in, a trained model, perplexities and a MIDI file out, in about 10 minutes on 2 CPU cores.
#
#   1. corpus   Bach chorales bundled with music21, written as MIDI      -> demo_out/midi/
#   2. prepare  REMIGEN2 tokens, 8:1:1 split, fairseq binarisation        -> demo_out/data-bin/
#   3. train    museformer_lm_tiny on CPU for TRAIN_MINUTES               -> demo_out/checkpoints/
#   4. evaluate perplexity on the test split at LENGTHS tokens            -> demo_out/ppl.json
#   5. sample   a new piece from the trained model                        -> demo_out/samples/*.mid
#   6. analyze  each sample's piano roll; L_t of samples vs the training corpus, and their SE
#                                      -> demo_out/samples/*.png, demo_out/analysis/{similarity.png,se.json}
#               and one page with all of it, the samples' audio and the perplexities -> demo_out/report/index.html
#
# Usage:  bash run_scripts/demo.sh            (or `make demo`, which installs .venv first)
# Variables:
#   OUT=demo_out             output folder (git-ignored); stages 3-6 start afresh, the corpus is reused
#   SUBSET=bach              music21 subset: bach (~400 chorales) | polyphonic (~1,900 pieces)
#   LIMIT=150                only the first N scores of the subset (empty = all; music21 needs ~1 s of CPU per score)
#   ARCH=museformer_lm_tiny  model size (museformer_lm = the paper's 4 x 512; far too slow for a CPU demo)
#   TRAIN_MINUTES=4          training time budget (fairseq --stop-time-hours)
#   LENGTHS=256,1024         evaluation lengths in tokens
#   NUM_SAMPLES=1            pieces to sample
#   SAMPLE_BARS=16           bars per sampled piece
#   SAMPLE_MAX_TOKENS=20480  longest sampled piece in tokens (the original's), whatever SAMPLE_BARS says
#   WORKERS=2                processes for corpus writing and tokenising
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
show_help_if_asked "$@"
use_project_venv
no_positional "$@"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-demo_out}"
SUBSET="${SUBSET:-bach}"
LIMIT="${LIMIT:-150}"
ARCH="${ARCH:-museformer_lm_tiny}"
TRAIN_MINUTES="${TRAIN_MINUTES:-4}"
LENGTHS="${LENGTHS:-256,1024}"
NUM_SAMPLES="${NUM_SAMPLES:-1}"
SAMPLE_BARS="${SAMPLE_BARS:-16}"
SAMPLE_MAX_TOKENS="${SAMPLE_MAX_TOKENS:-20480}"
WORKERS="${WORKERS:-2}"

for tool in python museformer-prep fairseq-train; do
  command -v "$tool" >/dev/null || { echo "demo.sh: '$tool' not found; run \`make install\` first" >&2; exit 2; }
done

start_all=$SECONDS
stage() { echo; echo "=== [$(( SECONDS - start_all ))s] $*"; }
run() { echo "+ $(printf '%q ' "$@")"; "$@"; }

stage "1/6 corpus: music21 '$SUBSET' scores -> $OUT/midi"
limit_args=()
[[ -n "$LIMIT" ]] && limit_args=(--limit "$LIMIT")
run museformer-prep corpus music21 "$OUT/midi" --subset "$SUBSET" --workers "$WORKERS" "${limit_args[@]}"

stage "2/6 prepare: REMIGEN2 tokens, 8:1:1 split, binarise -> $OUT/data-bin"
rm -rf "$OUT/data-bin"
run museformer-prep all "$OUT/midi" "$OUT/data-bin" --workers "$WORKERS"

stage "3/6 train: $ARCH on CPU for $TRAIN_MINUTES minutes -> $OUT/checkpoints"
rm -rf "$OUT/checkpoints" "$OUT/samples"
stop_hours="$(python -c "print($TRAIN_MINUTES / 60)")"
# Demo settings: a higher learning rate and a short warm-up (the paper's 16,000 warm-up updates would leave a
# few-minute run barely trained); validation and a checkpoint every 200 updates and at the end.
# Songs are cut to their first 2,048 tokens so that one always fits into a 2,048-token batch.
DATA_BIN="$OUT/data-bin" SAVE_DIR="$OUT/checkpoints" ARCH="$ARCH" DEVICE=cpu NPROC=1 MAX_TOKENS=2048 \
  TRUNCATE_TRAIN=2048 TRUNCATE_VALID=2048 LR=1e-3 WARMUP=100 MAX_UPDATE=100000 SAVE_INTERVAL_UPDATES=200 LOG_INTERVAL=25 SEED=1 \
  bash "$SCRIPT_DIR/train.sh" --stop-time-hours "$stop_hours"

stage "4/6 evaluate: perplexity on the test split at $LENGTHS tokens"
CHECKPOINT="$OUT/checkpoints/checkpoint_best.pt" DATA_BIN="$OUT/data-bin" OUT_JSON="$OUT/ppl.json" \
  LENGTHS="$LENGTHS" DEVICE=cpu bash "$SCRIPT_DIR/eval_ppl.sh"

stage "5/6 sample: $NUM_SAMPLES piece(s) of $SAMPLE_BARS bars -> $OUT/samples"
run museformer-sample "$OUT/checkpoints/checkpoint_best.pt" --data "$OUT/data-bin" --out "$OUT/samples" \
  --num-samples "$NUM_SAMPLES" --max-bars "$SAMPLE_BARS" --max-length "$SAMPLE_MAX_TOKENS" --grammar-mask --seed 1

stage "6/6 analyze: piano rolls, L_t of samples vs the training corpus, SE -> $OUT/analysis; report -> $OUT/report"
analyze=(python -m museformer_analysis)  # = museformer-analyze
rm -rf "$OUT/analysis"
if compgen -G "$OUT/samples/*.mid" >/dev/null; then
  mkdir -p "$OUT/analysis"
  for mid in "$OUT"/samples/*.mid; do
    run "${analyze[@]}" pianoroll "$mid"  # -> sample_NNN.png beside it
  done
  # The training corpus: the MIDI files of the train split (museformer-prep all records them in split/lists/).
  train_midi=()
  while IFS= read -r rel; do
    [[ -n "$rel" ]] && train_midi+=("$OUT/midi/$rel")
  done < "$OUT/data-bin/split/lists/train.txt"
  echo "+ ${analyze[*]} stats <the ${#train_midi[@]} train-split MIDI files of $OUT/midi>" \
       "--json $OUT/analysis/train_stats.json"
  "${analyze[@]}" stats "${train_midi[@]}" --json "$OUT/analysis/train_stats.json"
  run "${analyze[@]}" stats "$OUT/samples" --json "$OUT/analysis/samples_stats.json"
  run "${analyze[@]}" plot "$OUT/analysis/train_stats.json" "$OUT/analysis/samples_stats.json" \
    --label "training corpus" --label samples --out "$OUT/analysis/similarity.png"
  # SE needs samples of at least two bars; a toy run's samples may not have them: say so and finish the demo.
  if ! run "${analyze[@]}" se "$OUT/analysis/train_stats.json" "$OUT/analysis/samples_stats.json" \
      --json "$OUT/analysis/se.json"; then
    echo "no SE for these samples (see the line above); the piano rolls and the L_t plot are written"
  fi
  # One page for the run: pictures, audio (FluidSynth, or the line that installs it), L_t, SE, metrics, perplexity.
  rm -rf "$OUT/report"
  run "${analyze[@]}" report "$OUT/samples" --reference "$OUT/analysis/train_stats.json" \
    --reference-label "training corpus" --ppl "$OUT/ppl.json" \
    --title "make demo: $ARCH after $TRAIN_MINUTES minutes of CPU training" --out "$OUT/report"
else
  echo "no sampled MIDI in $OUT/samples: nothing to analyse"
fi

stage "done in $(( SECONDS - start_all ))s"
echo "perplexities:   $OUT/ppl.json"
echo "checkpoint:     $OUT/checkpoints/checkpoint_best.pt"
if compgen -G "$OUT/samples/*.mid" >/dev/null; then
  echo "listen to:      $(ls "$OUT"/samples/*.mid | head -n 3 | tr '\n' ' ')"
  echo "look at:        $(ls "$OUT"/samples/*.png | head -n 3 | tr '\n' ' ')$OUT/analysis/similarity.png"
  echo "SE:             $OUT/analysis/se.json"
  echo "audio:          museformer-analyze render $(ls "$OUT"/samples/*.mid | head -n 1) --out sample.ogg"
  echo "report:         $OUT/report/index.html  (open it in a browser: pictures, audio and numbers of the run)"
fi
