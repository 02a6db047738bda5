"""Quantisation constants of REMIGEN/REMIGEN2, each with its source (spec §1.1 = MidiProcessor v0.1.5 vocab_config)."""

DEFAULT_POSITIONS_PER_BEAT = 12  # grid steps per quarter note; MidiProcessor HEAD uses 12 (16 before 2022-04-23)
BEAT_NOTE_FACTOR = 4  # a "beat" is a quarter note: bar length = num * 4 * P // den positions
MAX_NOTES_PER_BAR = 2  # a bar is at most two whole notes long, so num <= 2 * den after reduction
MAX_TS_DENOMINATOR = 64  # TS table denominators are 1, 2, 4, ..., 64

DEFAULT_TS = (4, 4)  # assumed when a file has no time signature at position 0
DEFAULT_BPM = 120.0  # assumed when a file has no tempo at position 0

MIN_BPM = 16.0  # tempo ids: clamp to [16, 256] BPM, 12 steps per doubling -> t-0 .. t-48
MAX_BPM = 256.0
TEMPO_STEPS_PER_OCTAVE = 12
NUM_TEMPOS = 49

VELOCITY_STEP = 4  # v-k = velocity // 4, decoded as 4k + 2 -> v-0 .. v-31
NUM_VELOCITIES = 32

DURATION_GROUPS = 8  # group g has P bins of width 2**g positions -> d-0 .. d-(8P-1)

NUM_PITCHES = 128  # MIDI pitch; drum notes are stored as pitch + 128 (p-128 .. p-255)
DRUM_PITCH_OFFSET = 128
DRUM_INSTRUMENT = 128  # any is_drum track becomes i-128
NUM_INSTRUMENTS = 129

DECODE_TICKS_PER_BEAT = 480  # the original decoder writes 480 ticks per beat (spec §1.7)

# Time-signature table (spec §1.1): (j, 2**i) for i = 0..6 and j = 1..2*2**i, in this order. 254 entries.
TIME_SIGNATURES = tuple(
    (num, 2**i) for i in range(7) for num in range(1, MAX_NOTES_PER_BAR * 2**i + 1)
)
TS_TO_ID = {ts: k for k, ts in enumerate(TIME_SIGNATURES)}

# Sanity limits for absurd files (not in the original, which would allocate one slot per grid position).
MAX_TICK = 2**31  # note times must be below this (spec §1.2 step 1)
MAX_POSITIONS = 4_000_000  # ~83k bars of 4/4 at P=12; anything longer is treated as a broken file

MIDI_SUFFIXES = (".mid", ".midi")  # MIDI file names end in one of these, in any case
