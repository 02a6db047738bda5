"""museformer-analyze plot / heatmap / pianoroll / render: valid PNGs of the expected size, and audio errors."""
from __future__ import annotations

import array
import shutil
import wave
from pathlib import Path

import pytest

from midi_factory import make_song
from needs import require_programs
from museformer_analysis import audio
from museformer_analysis.cli import main
from measure import png_size
from museformer_analysis.plots import CURVES_SIZE, DPI, HEATMAP_SIZE, PIANOROLL_SIZE

pytest.importorskip("matplotlib")


def pixels(size_inches) -> tuple[int, int]:
    return round(size_inches[0] * DPI), round(size_inches[1] * DPI)


def assert_png(path: Path, size_inches) -> None:
    """A PNG that decodes, of exactly figsize x dpi pixels."""
    from matplotlib.image import imread

    assert path.is_file(), path
    width, height = pixels(size_inches)
    assert png_size(path) == (width, height)
    image = imread(str(path))  # decodes every chunk: a truncated or corrupt file raises here
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.01  # not a blank canvas


@pytest.fixture
def songs(tmp_path: Path) -> Path:
    """Two 6-bar multi-track songs (with drums) in a folder."""
    root = tmp_path / "songs"
    root.mkdir()
    for seed in range(2):
        make_song(num_bars=6, seed=seed).dump(str(root / f"song{seed}.mid"))
    return root


def test_plot_heatmap_pianoroll_write_pngs_of_the_expected_size(songs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(songs / "song0.mid", other / "copy.mid")
    out = tmp_path / "lt.png"
    assert main(["plot", str(songs), str(other), "--label", "songs", "--label", "copy", "--max-distance", "8",
                 "--out", str(out)]) == 0
    assert_png(out, CURVES_SIZE)

    assert main(["heatmap", str(songs / "song0.mid"), "--out", str(tmp_path / "heat.png")]) == 0
    assert_png(tmp_path / "heat.png", HEATMAP_SIZE)

    assert main(["pianoroll", str(songs / "song1.mid")]) == 0  # default: beside the input, same name
    assert_png(songs / "song1.png", PIANOROLL_SIZE)


def test_pictures_of_a_token_file_and_a_stats_json(songs, tmp_path):
    from data_prep.midi_to_tokens import encode_midi

    tok = tmp_path / "tok" / "song0.mid.txt"
    tok.parent.mkdir()
    tok.write_text(" ".join(encode_midi(songs / "song0.mid")) + "\n")
    assert main(["pianoroll", str(tok)]) == 0
    assert_png(tmp_path / "tok" / "song0.png", PIANOROLL_SIZE)
    assert main(["heatmap", str(tok)]) == 0
    assert_png(tmp_path / "tok" / "song0.heatmap.png", HEATMAP_SIZE)
    stats = tmp_path / "songs.json"
    assert main(["stats", str(songs), "--json", str(stats)]) == 0
    assert main(["plot", str(stats), str(tok.parent), "--out", str(tmp_path / "mixed.png")]) == 0
    assert_png(tmp_path / "mixed.png", CURVES_SIZE)


def test_plot_label_count_must_match(songs, tmp_path, capsys):
    assert main(["plot", str(songs), "--label", "a", "--label", "b", "--out", str(tmp_path / "x.png")]) == 2
    assert "--label was given 2 times for 1 inputs" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_pianoroll_of_a_bad_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_text("not midi")
    assert main(["pianoroll", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.mid" in err[0] and "not a Standard MIDI File" in err[0]


def test_render_with_a_missing_soundfont_exits_2_with_the_message(songs, tmp_path, capsys):
    code = main(["render", str(songs / "song0.mid"), str(tmp_path / "x.wav"), "--soundfont", str(tmp_path / "no.sf2")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no.sf2 not found" in err[0] and "apt-get install fluidsynth fluid-soundfont-gm" in err[0]
    assert not (tmp_path / "x.wav").exists()


def test_render_takes_out_like_the_other_pictures(songs, tmp_path, capsys):
    """One output form: --out (as pianoroll / heatmap / plot); the old second positional still parses for a release,
    and two different outputs are refused."""
    code = main(["render", str(songs / "song0.mid"), "--out", str(tmp_path / "x.wav"), "--soundfont",
                 str(tmp_path / "no.sf2")])
    assert code == 2 and "no.sf2 not found" in capsys.readouterr().err  # --out accepted; fails on the soundfont
    with pytest.raises(SystemExit) as exit_info:
        main(["render", str(songs / "song0.mid"), str(tmp_path / "a.wav"), "--out", str(tmp_path / "b.wav")])
    assert exit_info.value.code == 2 and "pass --out only" in capsys.readouterr().err


def test_render_without_any_soundfont_or_fluidsynth_says_what_to_install(songs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(audio, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    assert main(["render", str(songs / "song0.mid"), str(tmp_path / "x.wav")]) == 2
    assert "no General MIDI SoundFont found" in capsys.readouterr().err
    sf2 = tmp_path / "fake.sf2"
    sf2.write_bytes(b"RIFF")  # exists, so the next check (the program) is reached
    monkeypatch.setenv("PATH", str(tmp_path))  # no fluidsynth here
    assert main(["render", str(songs / "song0.mid"), str(tmp_path / "x.wav"), "--soundfont", str(sf2)]) == 2
    assert "fluidsynth program is not on PATH; install it with `apt-get install fluidsynth" in capsys.readouterr().err


def test_render_writes_a_wav_as_long_as_the_music(tmp_path):
    from midi_factory import make_midi

    require_programs()  # skips without FluidSynth or a SoundFont, saying what to install; fails in CI
    midi = tmp_path / "song.mid"
    # two 4/4 bars of piano quarter notes at 120 BPM: 8 beats = 4 s
    make_midi(midi, [(0, False, [(k * 480, (k + 1) * 480, 60 + k, 90) for k in range(8)])], tempos=[(0, 120.0)])
    wav = tmp_path / "song.wav"
    assert main(["render", str(midi), str(wav)]) == 0
    with wave.open(str(wav)) as w:
        seconds = w.getnframes() / w.getframerate()
        assert w.getnchannels() == 2 and w.getframerate() == audio.SAMPLE_RATE
        samples = w.readframes(w.getnframes())
    assert 4.0 <= seconds < 4.0 + 3.0  # FluidSynth adds the release tail of the last note
    pcm = array.array("h", samples)  # 16-bit samples
    assert max(abs(x) for x in pcm) > 1000  # sound, not silence


@pytest.mark.parametrize("suffix, magic", [(".flac", b"fLaC"), (".ogg", b"OggS")], ids=["flac", "ogg"])
def test_render_writes_the_format_its_suffix_names(tmp_path, suffix, magic):
    # FluidSynth 2.3 guesses the type from .oga but not from .ogg, and writes WAV for a suffix it does not know:
    # the file type is passed explicitly (-T), so a .ogg file really is Ogg.
    from midi_factory import make_midi

    require_programs()
    midi = tmp_path / "song.mid"
    make_midi(midi, [(0, False, [(k * 480, (k + 1) * 480, 60 + k, 90) for k in range(4)])])
    out = tmp_path / f"song{suffix}"
    assert main(["render", str(midi), "--out", str(out)]) == 0
    head = out.read_bytes()[:64]
    assert head.startswith(magic), head
    if suffix == ".ogg":
        assert b"vorbis" in head  # the Vorbis identification header sits in the first Ogg page


def test_render_to_an_unknown_suffix_exits_2_naming_the_formats(songs, tmp_path, capsys):
    assert main(["render", str(songs / "song0.mid"), "--out", str(tmp_path / "song.mp3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot tell the audio format from '.mp3'" in err[0] and ".flac" in err[0], err
