"""museformer-analyze stats / se and the bar-similarity and metric code, on hand-made MIDI with known structure.

Expected values are worked out by hand in each test (not by calling the code under test a second way)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.config import TokenizerConfig
from data_prep.midi_to_tokens import encode_midi
from midi_factory import make_midi, make_song
from museformer_analysis.cli import main
from museformer_analysis.metrics import MetricsStats, groove_consistency, pitch_class_entropy, scale_consistency
from museformer_analysis.piece import load_piece
from museformer_analysis.similarity import bar_similarity, similarity_error, similarity_matrix

TPB = 480  # ticks per beat of every hand-made file
BAR = 4 * TPB  # one 4/4 bar in ticks
Q = TPB  # a quarter note


def piano(notes, program: int = 0):
    """A pitched track from (start_tick, end_tick, pitch) triples."""
    return (program, False, [(s, e, p, 80) for s, e, p in notes])


def write(path: Path, tracks, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_midi(path, tracks, ticks_per_beat=TPB, **kw)
    return path


def repeat_every_4_bars(num_bars: int = 12):
    """Bar k holds a shared note X (C4 on beat 1) plus a note U_(k mod 4) of its own (pitch 62 + k mod 4, beat 3).
    So l(i, j) = 1 when i = j mod 4, and |{X}| / |{X, U_a, U_b}| = 1/3 otherwise."""
    notes = []
    for k in range(num_bars):
        t0 = k * BAR
        notes.append((t0, t0 + Q, 60))
        notes.append((t0 + 2 * Q, t0 + 3 * Q, 62 + k % 4))
    return [piano(notes)]


def stats_json(tmp_path: Path, *args) -> dict:
    out = tmp_path / "stats.json"
    assert main(["stats", *map(str, args), "--json", str(out)]) == 0
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------- bar similarity
def test_bar_similarity_definition():
    a, b = frozenset({(0, 60, 12), (12, 62, 12)}), frozenset({(0, 60, 12), (24, 64, 12)})
    assert bar_similarity(a, b) == pytest.approx(1 / 3)  # 1 shared of 3 distinct
    assert bar_similarity(a, a) == 1.0
    assert bar_similarity(a, frozenset()) == 0.0
    assert bar_similarity(frozenset(), frozenset()) is None  # two empty bars: no similarity, the pair is skipped


def test_piece_repeating_every_4_bars_has_L4_one_and_one_third_elsewhere(tmp_path):
    path = write(tmp_path / "rep4.mid", repeat_every_4_bars(12))
    stats = stats_json(tmp_path, path, "--max-distance", 11)
    assert stats["files"] == 1 and stats["skipped"] == {}
    sim = stats["similarity"]
    for t in range(1, 12):
        expected = 1.0 if t % 4 == 0 else 1 / 3
        assert sim[str(t)] == pytest.approx(expected, abs=1e-12), t
    assert max(sim[str(t)] for t in range(1, 12) if t % 4) < 1
    assert stats["pairs"] == {str(t): 12 - t for t in range(1, 12)}  # no empty bar, so every pair counts


def test_two_empty_bars_are_skipped_and_empty_vs_full_is_zero(tmp_path):
    # bars: A, empty, empty, A  ->  t=1: (A,e)=0, (e,e) skipped, (e,A)=0; t=2: 0, 0; t=3: (A,A)=1
    notes = [(0, Q, 60), (3 * BAR, 3 * BAR + Q, 60)]
    stats = stats_json(tmp_path, write(tmp_path / "gap.mid", [piano(notes)]), "--max-distance", 3)
    assert stats["similarity"] == {"1": 0.0, "2": 0.0, "3": 1.0}
    assert stats["pairs"] == {"1": 2, "2": 2, "3": 1}
    assert stats["metrics"]["empty_bar_rate"] == 0.5  # 2 empty bars of 4
    assert stats["metrics"]["notes_per_bar"] == 0.5


def test_shifted_repetition_across_a_time_signature_change(tmp_path):
    # 4/4 | 3/4 | 4/4: a motif opens bar 1 and again bar 3, which starts 3 beats after bar 2 (not 4).
    # Cut at a fixed 4/4 grid, bar 3's motif would sit inside bar 2 at beat 4 and match nothing.
    motif = [(0, Q, 60), (Q, 2 * Q, 64)]
    bar3 = BAR + 3 * Q
    notes = motif + [(BAR, BAR + Q, 70)] + [(bar3 + s, bar3 + e, p) for s, e, p in motif]
    ts = [(0, 4, 4), (BAR, 3, 4), (bar3, 4, 4)]
    path = write(tmp_path / "ts.mid", [piano(notes)], time_signatures=ts)
    piece = load_piece(path)
    assert piece.bar_length_pos == [48, 36, 48]  # 12 positions per beat
    expected = {"1": 0.0, "2": 1.0}  # (1,2) and (2,3) share nothing; (1,3) is the same motif
    assert stats_json(tmp_path, path, "--max-distance", 2)["similarity"] == expected
    # the same through token files, with and without time-signature tokens (then decoded as --ignore-ts)
    for ignore_ts in (False, True):
        tok = tmp_path / f"tok{int(ignore_ts)}" / "ts.mid.txt"
        tok.parent.mkdir()
        tok.write_text(" ".join(encode_midi(path, TokenizerConfig(ignore_ts=ignore_ts))) + "\n")
        assert stats_json(tmp_path, tok, "--max-distance", 2)["similarity"] == expected, ignore_ts


def test_drums_and_pitched_notes_of_the_same_number_do_not_match(tmp_path):
    hit = (0, Q, 36)
    pitched = piano([hit])  # bar 1: a pitched C2
    drums = (0, True, [(BAR + 0, BAR + Q, 36, 80)])  # bar 2: a kick drum, also key 36, same onset and duration
    piece = load_piece(write(tmp_path / "drums.mid", [pitched, drums]))
    sets = piece.bar_note_sets()
    assert sets == [frozenset({(0, 36, 12)}), frozenset({(0, 36 + 128, 12)})]
    assert similarity_matrix(sets)[0, 1] == 0.0
    # control: the same two notes both pitched are the same note
    both = piano([hit, (BAR, BAR + Q, 36)])
    assert similarity_matrix(load_piece(write(tmp_path / "both.mid", [both])).bar_note_sets())[0, 1] == 1.0


def test_per_instrument_pools_pairs_of_each_instrument(tmp_path):
    # piano plays the same note every bar; the guitar a different one each bar.
    # pooled: {P, G_k} vs {P, G_k+1} -> 1/3.  per instrument: piano pairs 1, guitar pairs 0 -> mean 1/2.
    keys = [(k * BAR, k * BAR + Q, 60) for k in range(4)]
    guitar = [(k * BAR, k * BAR + Q, 64 + k) for k in range(4)]
    path = write(tmp_path / "two.mid", [piano(keys), piano(guitar, program=25)])
    assert stats_json(tmp_path, path, "--max-distance", 1)["similarity"]["1"] == pytest.approx(1 / 3)
    per = stats_json(tmp_path, path, "--max-distance", 1, "--per-instrument")
    assert per["similarity"]["1"] == pytest.approx(0.5)
    assert per["similarity_by_instrument"] == {"0": {"1": 1.0}, "25": {"1": 0.0}}


def test_leading_empty_bars_are_dropped_unless_asked(tmp_path):
    path = write(tmp_path / "late.mid", [piano([(2 * BAR, 2 * BAR + Q, 60), (3 * BAR, 3 * BAR + Q, 60)])])
    assert load_piece(path).num_bars == 2
    assert load_piece(path, remove_empty_bars=False).num_bars == 4


# ------------------------------------------------------------------------------------------------------------ SE
def test_same_corpora_give_se_zero(tmp_path):
    for name in ("ref", "gen"):
        (tmp_path / name).mkdir()
        for seed in range(2):
            make_song(num_bars=6, seed=seed).dump(str(tmp_path / name / f"{seed}.mid"))
    out = tmp_path / "se.json"
    assert main(["se", str(tmp_path / "ref"), str(tmp_path / "gen"), "--max-distance", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["se"] == 0.0
    assert result["distances"] == [1, 2, 3, 4, 5]  # 6-bar songs: no pair is 6 or more bars apart
    assert result["reference"]["similarity"] == result["generated"]["similarity"]
    assert result["reference"]["files"] == result["generated"]["files"] == 2


def test_se_against_a_hand_computed_value(tmp_path):
    # reference: L_t = 1 for t = 4, 8 and 1/3 for the other t in 1..11; generated: every bar alike, L_t = 1.
    # SE = mean over t = 1..11 of |L_t - 1| = 9 * (2/3) / 11 = 6/11.
    ref = write(tmp_path / "ref" / "rep4.mid", repeat_every_4_bars(12))
    gen = write(tmp_path / "gen" / "same.mid", [piano([(k * BAR, k * BAR + Q, 60) for k in range(12)])])
    out = tmp_path / "se.json"
    assert main(["se", str(ref.parent), str(gen.parent), "--max-distance", "11", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["se"] == pytest.approx(6 / 11, abs=1e-12)
    # a stats JSON can stand in for a folder and gives the same SE
    ref_json = tmp_path / "ref.json"
    assert main(["stats", str(ref.parent), "--max-distance", "11", "--json", str(ref_json)]) == 0
    assert main(["se", str(ref_json), str(gen.parent), "--max-distance", "11", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["se"] == pytest.approx(6 / 11, abs=1e-12)
    # ... but not one computed with other settings
    assert main(["se", str(ref_json), str(gen.parent), "--max-distance", "11", "--per-instrument"]) == 2


def test_similarity_error_uses_only_shared_distances():
    se, used = similarity_error({"1": 0.5, "2": 0.25, "3": None}, {"1": 0.25, "2": None, "3": 0.5})
    assert (se, used) == (0.25, [1])
    with pytest.raises(ValueError, match="share no bar distance"):
        similarity_error({"1": None}, {"1": 0.3})


# ------------------------------------------------------------------------------------------------------- metrics
def test_metrics_on_a_c_major_scale(tmp_path):
    scale = [60, 62, 64, 65, 67, 69, 71, 72]  # C4 .. C5, two quarter notes per bar
    path = write(tmp_path / "scale.mid", [piano([(k * 2 * Q, k * 2 * Q + Q, p) for k, p in enumerate(scale)])])
    piece = load_piece(path)
    pitches = [n.pitch for n in piece.notes]
    assert scale_consistency(pitches) == 1.0
    # C twice in 8 notes, six other classes once: -(1/4 log2 1/4 + 6 * 1/8 log2 1/8) = 0.5 + 2.25
    assert pitch_class_entropy(pitches) == pytest.approx(2.75, abs=1e-12)
    assert groove_consistency(piece) == 1.0  # every bar has onsets on beats 1 and 3
    m = stats_json(tmp_path, path)["metrics"]
    assert m["scale_consistency"] == 1.0 and m["pitch_class_entropy"] == pytest.approx(2.75)
    assert m["bars"] == 4 and m["notes"] == 8 and m["notes_per_bar"] == 2.0 and m["empty_bar_rate"] == 0.0


def test_scale_consistency_chromatic_and_drums_ignored(tmp_path):
    chromatic = list(range(60, 72))  # 12 classes: the best scale holds 7 of them
    drums = (0, True, [(k * Q, k * Q + Q, 40 + k, 80) for k in range(12)])  # must not count as pitches
    path = write(tmp_path / "chrom.mid", [piano([(k * Q, k * Q + Q, p) for k, p in enumerate(chromatic)]), drums])
    stats = MetricsStats()
    stats.add_piece(load_piece(path))
    summary = stats.summary()
    assert summary["scale_consistency"] == pytest.approx(7 / 12)
    assert summary["pitch_class_entropy"] == pytest.approx(math.log2(12))


def test_groove_consistency_hand_value(tmp_path):
    # bar 1 onsets on beats 1, 2; bar 2 on beats 1, 3: hamming 2 of 48 positions -> 1 - 2/48
    notes = [(0, Q, 60), (Q, 2 * Q, 62), (BAR, BAR + Q, 60), (BAR + 2 * Q, BAR + 3 * Q, 62)]
    assert groove_consistency(load_piece(write(tmp_path / "g.mid", [piano(notes)]))) == pytest.approx(1 - 2 / 48)


# ---------------------------------------------------------------------------------------------- inputs and CLI
def test_unreadable_files_are_counted_by_reason(tmp_path, capsys):
    root = tmp_path / "mixed"
    write(root / "good.mid", repeat_every_4_bars(4))
    (root / "bad.mid").write_text("not a MIDI file\n" * 5)
    (root / "empty.mid").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not a MIDI or token suffix")
    (root / "binary.mid.txt").write_bytes(b"\xff\xfe\x00garbage")
    write(root / "twin.mid", repeat_every_4_bars(4))
    (root / "twin.mid.txt").write_text(" ".join(encode_midi(root / "twin.mid")))  # beside its MIDI: not counted twice
    stats = stats_json(tmp_path, root)
    assert stats["files"] == 2
    assert stats["skipped"] == {"not_midi": 1, "empty_file": 1, "not_text": 1, "token_twin_of_midi": 1}
    assert "skipped:" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere: no such file or folder" in err[0]
    (tmp_path / "empty_dir").mkdir()
    assert main(["stats", str(tmp_path / "empty_dir")]) == 2
    assert "no MIDI" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["stats", str(tmp_path), "--max-distance", "0"])
    assert exc.value.code == 2
    bad = tmp_path / "only_bad"
    bad.mkdir()
    (bad / "x.mid").write_text("garbage")
    assert main(["stats", str(bad)]) == 1  # nothing could be analysed


def test_help_of_every_subcommand():
    for command in ("stats", "se", "plot", "heatmap", "pianoroll", "render", "report"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0


def test_works_without_fairseq_or_torch(tmp_path):
    path = write(tmp_path / "rep4.mid", repeat_every_4_bars(8))
    code = (
        "import sys; sys.modules['fairseq'] = None; sys.modules['torch'] = None\n"  # any import of them fails
        "from museformer_analysis.cli import main\n"
        f"assert main(['report', {str(path)!r}, '--out', {str(tmp_path / 'report')!r}]) == 0\n"
        f"sys.exit(main(['stats', {str(path)!r}, '--max-distance', '4']))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo,
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.split("\n", 1)[1])["similarity"]["4"] == 1.0  # after report's "wrote ..." line
    assert (tmp_path / "report" / "index.html").is_file()


def test_compare_table_adds_an_se_column(tmp_path):
    compare_table = pytest.importorskip("museformer_tools.compare_table")  # imports fairseq (the plugin)
    ppl = {"256": {"ppl": 10.0, "songs": 2, "songs_whole": 0, "tokens": 512}}
    for name, se in (("museformer", 0.05), ("full", 0.08), ("linear", None)):
        run = tmp_path / name
        run.mkdir()
        (run / "ppl.json").write_text(json.dumps(ppl))
        if se is not None:  # linear: sampling failed, so no se.json
            (run / "se.json").write_text(json.dumps({
                "se": se, "distances": list(range(1, 16)),
                "reference": {"files": 15}, "generated": {"files": 4, "metrics": {"bars": 64}}}))
    out = tmp_path / "results.md"
    runs = [f"{n}={tmp_path / n}" for n in ("museformer", "full", "linear")]
    assert compare_table.main(["--out", str(out), "--command", "test", *runs]) == 0
    page = out.read_text()
    assert "| model | params | updates | PPL @ 256 | SE |" in page
    assert "| museformer | ? | ? | **10.000** | **0.0500** |" in page  # the lowest SE in bold
    assert "| full | ? | ? | **10.000** | 0.0800 |" in page
    assert "| linear | ? | ? | **10.000** | – |" in page
    assert "- `museformer`: 4 pieces, 64 bars, t = 1..15 (15 distances)." in page
    assert "- no SE for `linear`: its run folder has no se.json" in page
