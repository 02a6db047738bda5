"""museformer-analyze report: a self-contained page (every link is a relative path to a file inside the report),
the facts of each piece and of the set as the analysis computes them, and the page without FluidSynth.

The page in a real browser is tests/test_report_browser.py.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from data_prep.grammar import count_errors
from data_prep.midi_to_tokens import encode_midi
from midi_factory import make_midi, make_song
from museformer_analysis import audio
from museformer_analysis.cli import main
from museformer_analysis.corpus import corpus_stats
from museformer_analysis.similarity import similarity_error

pytest.importorskip("matplotlib")

# A piece worked out by hand: 4 bars of 3/4 at 90 BPM, then 4 bars of 4/4 at 120 BPM, one C4 quarter per beat.
METER_BARS, METER_NOTES = 8, 4 * 3 + 4 * 4
PPL = {"256": {"loss": 2.5, "loss_unit": "bits/token (base 2, as fairseq-validate)", "nll_nats": 1.7329,
               "ppl": 5.6569, "tokens": 1234, "songs": 3, "songs_whole": 1},
       "1024": {"loss": 2.25, "loss_unit": "bits/token (base 2, as fairseq-validate)", "nll_nats": 1.5596,
                "ppl": 4.7568, "tokens": 2345, "songs": 3, "songs_whole": 3}}  # the keys museformer-eval-ppl writes


def write_meter_piece(path: Path) -> None:
    three_four = [(k * 480, (k + 1) * 480, 60, 90) for k in range(12)]  # ticks 0..5760: bars 1-4
    four_four = [(5760 + k * 480, 5760 + (k + 1) * 480, 60, 90) for k in range(16)]  # bars 5-8
    make_midi(path, [(0, False, three_four + four_four)], tempos=[(0, 90.0), (5760, 120.0)],
              time_signatures=[(0, 3, 4), (5760, 4, 4)])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A generation run as museformer-sample leaves it (MIDI + x.txt tokens, one with grammar errors), a token
    file of the same name in another folder, a reference corpus and a ppl.json."""
    root = tmp_path_factory.mktemp("run")
    samples, tokens, ref = root / "samples", root / "tokens", root / "reference"
    for folder in (samples, tokens, ref):
        folder.mkdir()
    make_song(num_bars=8, seed=0).dump(str(samples / "song0.mid"))
    broken = encode_midi(samples / "song0.mid") + ["d-5", "v-3"]  # a d- and a v- after the last bar: errors
    (samples / "song0.txt").write_text(" ".join(broken) + "\n")
    write_meter_piece(samples / "meter.mid")
    (tokens / "song0.mid.txt").write_text(" ".join(encode_midi(make_song(num_bars=6, seed=5))) + "\n")
    for seed in range(3):
        make_song(num_bars=12, seed=10 + seed).dump(str(ref / f"ref{seed}.mid"))
    (root / "ppl.json").write_text(json.dumps(PPL))
    return root


@pytest.fixture(scope="module")
def report(run) -> Path:
    out = run / "report"
    assert main(["report", str(run / "samples"), str(run / "tokens"), "--reference", str(run / "reference"),
                 "--reference-label", "the <reference>", "--ppl", str(run / "ppl.json"), "--out", str(out),
                 "--title", "run 1"]) == 0
    return out


INLINE_TAGS = ("a", "b", "code", "small", "sub")


class Links(HTMLParser):
    """Every URL the page refers to (src, href, poster, srcset, CSS url(...)), and its tags."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in INLINE_TAGS:
            self.text.append(" ")  # "<td>1</td><td>0.5</td>" reads "1 0.5"
        for key in ("src", "href", "poster", "data"):
            if attrs.get(key) is not None:
                self.urls.append(attrs[key])
        if attrs.get("srcset"):
            self.urls += [part.split()[0] for part in attrs["srcset"].split(",")]
        if attrs.get("style"):
            self.urls += re.findall(r"url\(['\"]?([^'\")]+)", attrs["style"])

    def handle_data(self, data):
        self.text.append(data)
        self.urls += re.findall(r"url\(['\"]?([^'\")]+)", data)  # inside <style>
        self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def page_text(page: Path) -> str:
    return re.sub(r"\s+", " ", "".join(parse(page).text))


def test_every_link_is_a_relative_path_to_a_file_inside_the_report(report):
    links = parse(report / "index.html")
    assert links.urls, "the page links nothing"
    for url in links.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"absolute or remote URL in the page: {url}"
        assert not url.startswith("/"), f"absolute path in the page: {url}"
        target = (report / unquote(parts.path)).resolve()
        assert report.resolve() in target.parents, f"{url} points outside the report folder"
        assert target.is_file(), f"{url} does not exist in {report}"
    assert not [t for t, _ in links.tags if t in ("script", "iframe", "link", "object", "embed")]


def test_each_piece_has_its_pictures_audio_or_install_hint_and_a_copy(report):
    links = parse(report / "index.html")
    images = [a["src"] for t, a in links.tags if t == "img"]
    assert len(images) == 1 + 2 * 3  # the L_t plot, then piano roll + heatmap of each of the 3 pieces
    assert len(set(images)) == len(images)  # song0.mid and song0.mid.txt do not overwrite each other
    for stem in ("song0", "meter", "song0_2"):
        assert f"pieces/{stem}.png" in images and f"pieces/{stem}.heatmap.png" in images
    copies = [a["href"] for t, a in links.tags if t == "a" and a["href"].startswith("pieces/song0")]
    assert set(copies) >= {"pieces/song0.mid", "pieces/song0_2.mid.txt"}
    sources = [a["src"] for t, a in links.tags if t == "source"]
    if not _audio_missing():
        assert sorted(sources) == ["pieces/meter.ogg", "pieces/song0.ogg", "pieces/song0_2.ogg"]
        assert all((report / s).read_bytes()[:4] == b"OggS" for s in sources)
    else:
        assert not sources and "apt-get install fluidsynth fluid-soundfont-gm" in page_text(report / "index.html")


def _audio_missing() -> bool:
    try:
        audio.find_soundfont(None), audio.find_fluidsynth()
    except audio.AudioToolMissing:
        return True
    return False


def test_piece_facts_match_the_hand_worked_piece_and_the_token_file(report, run):
    text = page_text(report / "index.html")
    meter = text[text.index("meter.mid"):]
    meter = meter[: meter.index("song0")] if "song0" in meter else meter
    assert f"bars: {METER_BARS}" in meter and f"notes: {METER_NOTES}" in meter
    assert "tempo: 90-120 BPM (1 change)" in meter
    assert "time signature: 3/4, 4/4 from bar 5" in meter
    assert "instruments: piano (0)" in meter
    assert "grammar errors: – (no token file" in meter
    expected = count_errors((run / "samples" / "song0.txt").read_text().split())
    assert expected > 0
    assert f"grammar errors: {expected} (song0.txt)" in text
    assert "grammar errors: 0 (song0.mid.txt)" in text


def test_set_numbers_are_the_analysis_numbers(report, run):
    text = page_text(report / "index.html")
    gen = corpus_stats([str(run / "samples"), str(run / "tokens")])
    ref = corpus_stats([str(run / "reference")])
    se, used = similarity_error(ref["similarity"], gen["similarity"], 32)
    assert f"SE = {se:.4f} mean |Lt(reference) − Lt(generated)| over t = 1..{used[-1]}" in text
    assert f"1 {gen['similarity']['1']:.3f} {ref['similarity']['1']:.3f}" in text  # the L_1 row
    row = f"groove consistency {gen['metrics']['groove_consistency']:.3f} {ref['metrics']['groove_consistency']:.3f}"
    assert row in text
    assert f"{gen['files']} pieces; reference corpus: the <reference>, 3 files" in text  # escaped in the markup
    for length, r in PPL.items():  # the perplexity table: length, songs, whole, tokens, loss, ppl
        assert (f"{int(length):,} {r['songs']} {r['songs_whole']} {r['tokens']:,} {r['loss']:.4f} {r['ppl']:.4f}"
                in text)


def test_without_fluidsynth_the_page_says_what_to_install(run, tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    out = tmp_path / "report"
    assert main(["report", str(run / "samples" / "meter.mid"), "--out", str(out)]) == 0
    links = parse(out / "index.html")
    assert not [t for t, _ in links.tags if t in ("audio", "source")]
    text = page_text(out / "index.html")
    assert "No audio: no General MIDI SoundFont found" in text and "apt-get install fluidsynth fluid-soundfont-gm" in text
    assert "No SE: no reference corpus was given" in text and "Perplexity" not in text
    assert not list((out / "pieces").glob("*.ogg"))


@pytest.mark.parametrize("extra, message", [
    (["--ppl", "missing.json"], "--ppl missing.json: no such file"),
    (["--ppl", "bad.json"], "not written by `museformer-eval-ppl --json`"),
    (["--soundfont", "none.sf2"], "SoundFont none.sf2 not found"),
    (["--reference", "nowhere"], "nowhere: no such file or folder"),
    (["--out", "songs/report"], "--out songs/report is inside the input folder songs"),
], ids=["ppl-missing", "ppl-foreign", "soundfont-missing", "reference-missing", "out-inside-input"])
def test_bad_input_exits_2_with_one_line(run, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "museformer-analyze stats v1"}))
    (tmp_path / "songs").mkdir()
    write_meter_piece(tmp_path / "songs" / "meter.mid")
    assert main(["report", "songs", "--out", "out", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("museformer-analyze report: error: ") and message in err[0], err


def test_nothing_to_analyse_exits_1(tmp_path, capsys):
    (tmp_path / "empty.mid").write_bytes(b"")
    assert main(["report", str(tmp_path / "empty.mid"), "--out", str(tmp_path / "out")]) == 1
    assert "could be analysed" in capsys.readouterr().err


def test_a_long_instrument_list_is_cut_to_a_count(tmp_path):
    # an untrained model's sample may use a hundred programs; the page lists 12 and counts the rest
    tracks = [(program, False, [(0, 480, 60, 90)]) for program in range(20)]
    make_midi(tmp_path / "many.mid", tracks)
    assert main(["report", str(tmp_path / "many.mid"), "--out", str(tmp_path / "report")]) == 0
    text = page_text(tmp_path / "report" / "index.html")
    assert "instruments: piano (0), piano (1), " in text and "chromatic perc. (11) and 8 more (20 in all)" in text
    assert "(12)" not in text
