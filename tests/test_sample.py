"""museformer-sample: reproducible sampling, prompt continuation, MIDI output, bad input, fairseq-interactive.

The checkpoint is a randomly initialised ``museformer_lm_tiny`` saved with fairseq's checkpoint utils (what
fairseq-train writes, minus the optimiser), on a data dir made like ``museformer-prep binarize`` makes it:
``dict.txt`` from ``data_prep.vocab.write_dict`` plus ``tokenizer.json``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import miditoolkit
import pytest
import torch

from needs import require_fairseq

require_fairseq()

from lm_data import REPO_ROOT  # noqa: E402
from data_prep.config import TokenizerConfig  # noqa: E402
from data_prep.grammar import count_errors  # noqa: E402
from data_prep.midi_to_tokens import encode_midi  # noqa: E402
from data_prep.vocab import write_dict  # noqa: E402
from museformer_tools.sample import main  # noqa: E402

TOK_CFG = TokenizerConfig(instruments="lmd6", ignore_ts=True)
PLUGIN = str(REPO_ROOT / "museformer_plugin")


# Tiny matmuls: extra OpenMP threads only add contention on a shared CI machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_data_dir(path: Path, cfg: TokenizerConfig = TOK_CFG) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_dict(path / "dict.txt", cfg)
    (path / "tokenizer.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    return path


def make_checkpoint(data_dir: Path, path: Path, edit=None) -> Path:
    """A random museformer_lm_tiny checkpoint in fairseq's format (cfg + model state); ``edit(model, task)`` may
    change the weights before they are saved."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_dir), "--user-dir", PLUGIN, "--task", "museformer_lm",
                                                "--arch", "museformer_lm_tiny", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    if edit is not None:
        with torch.no_grad():
            edit(model, task)
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {},
    }
    checkpoint_utils.torch_persistent_save(state, str(path))
    return path


def make_midi(path: Path, num_bars: int = 6) -> Path:
    """A piano + drums MIDI with a different chord in every 4/4 bar."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0, name="piano")
    drums = miditoolkit.Instrument(program=0, is_drum=True, name="drums")
    for bar in range(num_bars):
        start = bar * 4 * 480
        for k, pitch in enumerate((60 + bar, 64 + bar, 67 + bar)):
            piano.notes.append(miditoolkit.Note(velocity=80, pitch=pitch, start=start + k * 480, end=start + 960))
        drums.notes.append(miditoolkit.Note(velocity=90, pitch=36, start=start, end=start + 120))
    midi.instruments = [piano, drums]
    midi.dump(str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    data = make_data_dir(root / "data-bin")
    ckpt = make_checkpoint(data, root / "checkpoint.pt")
    return data, ckpt, make_midi(root / "prompt.mid"), root


def run_sample(setup, out, *extra):
    data, ckpt, _, _ = setup
    # --threads 1: museformer-sample defaults to all cores; tiny models only lose by that on a shared machine
    return main([str(ckpt), "--data", str(data), "--out", str(out), "--threads", "1", *map(str, extra)])


def read_outputs(out: Path):
    return [p.read_text(encoding="utf-8").split() for p in sorted(out.glob("sample_*.txt"))]


def test_same_seed_same_tokens(setup, tmp_path, capsys):
    common = ("--num-samples", 3, "--batch-size", 2, "--max-tokens", 60)
    assert run_sample(setup, tmp_path / "a", *common, "--seed", 5) == 0
    assert run_sample(setup, tmp_path / "b", *common, "--seed", 5) == 0
    assert run_sample(setup, tmp_path / "c", *common, "--seed", 6) == 0
    a, b, c = (read_outputs(tmp_path / x) for x in "abc")
    assert len(a) == 3 and a == b
    assert a != c, "another seed must give other pieces"
    assert "wrote 3 MIDI + token files" in capsys.readouterr().out


def test_prompt_bars_come_back_and_outputs_decode(setup, tmp_path):
    _, _, prompt_midi, _ = setup
    prompt = encode_midi(prompt_midi, TOK_CFG)
    ends = [j for j, t in enumerate(prompt) if t == "b-1"]
    assert len(ends) >= 4, "the prompt MIDI must have more bars than --prompt-bars"
    prompt2 = prompt[: ends[1] + 1]  # the first 2 bars
    out = tmp_path / "cont"
    rc = run_sample(setup, out, "--num-samples", 2, "--prompt-midi", prompt_midi, "--prompt-bars", 2,
                    "--max-tokens", len(prompt2) + 40, "--grammar-mask", "--seed", 3)
    assert rc == 0
    pieces = read_outputs(out)
    assert len(pieces) == 2
    for tokens in pieces:
        assert tokens[: len(prompt2)] == prompt2, "the prompt's bars must start the output unchanged"
        assert len(tokens) > len(prompt2)
        assert count_errors(tokens, TOK_CFG) == 0, "the grammar mask must give well-formed REMIGEN"
    for mid in sorted(out.glob("sample_*.mid")):
        midi = miditoolkit.MidiFile(str(mid))  # every output is a MIDI file miditoolkit reads
        assert sum(len(i.notes) for i in midi.instruments) >= 8  # at least the prompt's notes


def test_max_bars_stops_pieces(setup, tmp_path):
    rc = run_sample(setup, tmp_path / "bars", "--num-samples", 2, "--max-bars", 2, "--max-tokens", 120,
                    "--grammar-mask", "--seed", 1)
    assert rc == 0
    for tokens in read_outputs(tmp_path / "bars"):
        assert tokens.count("b-1") <= 2
        assert tokens[-1] == "b-1" or len(tokens) == 120


def test_bad_inputs_give_one_line_errors(setup, tmp_path, capsys):
    data, ckpt, prompt_midi, root = setup
    garbage = tmp_path / "broken.mid"
    garbage.write_bytes(b"this is not a MIDI file")
    other = make_data_dir(tmp_path / "general", TokenizerConfig(instruments="general"))  # another vocabulary
    no_dict = tmp_path / "empty"
    no_dict.mkdir()
    cases = {
        "unreadable prompt": ([str(ckpt), "--data", str(data), "--prompt-midi", str(garbage)], "cannot use --prompt-midi"),
        "other vocabulary": ([str(ckpt), "--data", str(other)], "vocabulary"),
        "prompt too long": ([str(ckpt), "--data", str(data), "--prompt-midi", str(prompt_midi), "--prompt-bars", 4,
                             "--max-tokens", 10], "not fewer than --max-tokens"),
        "missing dict.txt": ([str(ckpt), "--data", str(no_dict)], "no dict.txt"),
        "missing checkpoint": ([str(root / "nope.pt"), "--data", str(data)], "does not exist"),
    }
    for name, (argv, expected) in cases.items():
        rc = main([*map(str, argv), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("museformer-sample: error:")]
        assert rc == 2, f"{name}: exit status {rc}"
        assert len(lines) == 1 and expected in lines[0], f"{name}: {err!r}"
        assert "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.mid")) if (tmp_path / "out").exists() else True


def test_fairseq_interactive_smoke(setup):
    """fairseq's own generation path (SequenceGenerator + the incremental decoder) from one empty line."""
    data, ckpt, _, _ = setup
    cmd = [sys.executable, "-m", "fairseq_cli.interactive", str(data), "--user-dir", PLUGIN,
           "--task", "museformer_lm", "--path", str(ckpt), "--sampling", "--sampling-topk", "8", "--beam", "1",
           "--nbest", "1", "--max-len-b", "40", "--seed", "1", "--cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, input="\n", capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hyps = [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("H-0")]
    assert len(hyps) == 1, proc.stdout[-2000:]
    tokens = hyps[0][2].split()
    assert 1 <= len(tokens) <= 40
    assert all(t.split("-")[0] in "boipdvst" for t in tokens), tokens[:10]


def test_analyze_writes_a_piano_roll_beside_each_midi(setup, tmp_path):
    pytest.importorskip("matplotlib")
    from measure import png_size
    from museformer_analysis.plots import DPI, PIANOROLL_SIZE

    _, _, prompt_midi, _ = setup
    out = tmp_path / "rolls"
    rc = run_sample(setup, out, "--num-samples", 2, "--prompt-midi", prompt_midi, "--prompt-bars", 2,
                    "--max-tokens", 80, "--grammar-mask", "--analyze")
    assert rc == 0
    for k in range(2):  # the prompt's notes are in every sample, so every sample has a picture
        assert png_size(out / f"sample_{k:03d}.png") == (PIANOROLL_SIZE[0] * DPI, PIANOROLL_SIZE[1] * DPI)


def test_report_writes_the_run_page_with_the_token_files_grammar_errors(setup, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _, _, prompt_midi, _ = setup
    out, report = tmp_path / "samples", tmp_path / "samples_report"
    rc = run_sample(setup, out, "--num-samples", 2, "--prompt-midi", prompt_midi, "--prompt-bars", 2,
                    "--max-length", 80, "--report", report)
    assert rc == 0
    assert f"wrote {report / 'index.html'}" in capsys.readouterr().out
    html = (report / "index.html").read_text()
    for k in range(2):  # the prompt's notes are in every sample, so every sample is drawn
        assert f'src="pieces/sample_{k:03d}.png"' in html and f'src="pieces/sample_{k:03d}.heatmap.png"' in html
        assert (report / "pieces" / f"sample_{k:03d}.mid").read_bytes() == (out / f"sample_{k:03d}.mid").read_bytes()
    # grammar errors come from sample_NNN.txt beside each MIDI; the grammar mask keeps them at 0
    assert html.count("<b>grammar errors:</b> 0 <small>(sample_") == 2


def test_report_inside_out_is_refused_before_sampling(setup, tmp_path, capsys):
    out = tmp_path / "samples"
    assert run_sample(setup, out, "--report", out / "report") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--report {out / 'report'} is inside --out {out}" in err[0], err
    assert not out.exists() or not list(out.glob("sample_*"))  # refused before anything was sampled
