"""museformer-sample's options: the logits filter (top-k, top-p), temperature, --min-tokens, --max-bars, and one
CLI test per argument error of ``check_args``.

The CLI tests use a checkpoint whose next-token logits are chosen by the test: the final LayerNorm's weight is 0
and its bias a unit vector, so its output is that vector at every position whatever the input, and column 0 of the
output projection then *is* the logits vector. Every sampled token therefore comes from a known distribution.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

import torch  # noqa: E402

from lm_data import REPO_ROOT  # noqa: E402
from data_prep.config import TokenizerConfig  # noqa: E402
from data_prep.vocab import write_dict  # noqa: E402
from museformer_tools.sample import build_parser, half_batch_note, main  # noqa: E402
from museformer_tools.sampling import filter_logits  # noqa: E402
from test_sample import make_checkpoint  # noqa: E402

TOK_CFG = TokenizerConfig(instruments="lmd6", ignore_ts=True)
PLUGIN = str(REPO_ROOT / "museformer_plugin")
# The grammar mask would restrict which tokens can follow which; these tests are about the plain options.
GRAMMAR_OFF = ["--no-grammar-mask"] if "--no-grammar-mask" in build_parser().format_help() else []

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- filter_logits

def kept(logits):
    return torch.isfinite(logits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_keeps_the_k_largest_and_zero_keeps_all(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 50, generator=g)
    assert kept(filter_logits(logits, 0, None)).all(), "--top-k 0 must keep every token"
    assert torch.equal(filter_logits(logits, 0, None), logits)
    out = filter_logits(logits, 5, None)
    for row in range(3):
        assert set(kept(out[row]).nonzero().flatten().tolist()) == set(logits[row].topk(5).indices.tolist())
        assert torch.equal(out[row][kept(out[row])], logits[row][kept(out[row])]), "kept logits must not change"
    assert kept(filter_logits(logits, 50, None)).all() and kept(filter_logits(logits, 500, None)).all()


def smallest_nucleus(logits_row, p):
    """Indices of the smallest set of tokens with total probability >= p, by hand (sorted, cumulated in float64)."""
    probs = torch.softmax(logits_row.double(), dim=-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    total, chosen = 0.0, []
    for i in order:
        chosen.append(i)
        total += probs[i]
        if total >= p:
            break
    return set(chosen)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_p_keeps_the_smallest_set_with_mass_p(seed, p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 40, generator=g) * 2
    out = filter_logits(logits, 0, p)
    for row in range(4):
        chosen = set(kept(out[row]).nonzero().flatten().tolist())
        assert chosen == smallest_nucleus(logits[row], p), (row, p)
        mass = torch.softmax(logits[row].double(), -1)[sorted(chosen)].sum().item()
        assert mass >= p - 1e-6  # fp32 cumulative sums: a set whose mass is p to 1e-6 is a tie, not an error


def test_half_batch_note_only_for_emulated_half_batches():
    """The note appears for a bf16/fp16 batch on an AVX2 CPU, and not for fp32, one piece, CUDA or AVX-512."""
    def note(*extra, capability="AVX2"):
        return half_batch_note(build_parser().parse_args(["ck", "--data", "d", "--out", "o", *extra]), capability)

    assert "try --dtype fp32" in note("--dtype", "bf16", "--batch-size", "8")
    assert "AVX2" in note("--dtype", "fp16", "--batch-size", "2")
    assert note("--batch-size", "8") is None
    assert note("--dtype", "bf16") is None
    assert note("--dtype", "bf16", "--batch-size", "8", "--device", "cuda") is None
    assert note("--dtype", "bf16", "--batch-size", "8", capability="AVX512") is None


def test_top_p_one_keeps_all_and_tiny_p_keeps_the_argmax():
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0]])
    assert kept(filter_logits(logits, 0, 1.0)).all()
    assert kept(filter_logits(logits, 0, 1e-6)).tolist() == [[False, True, False, False]]
    # top-k and top-p together: the nucleus is taken within the top-k set (k = 2 here: tokens 1 and 3)
    assert kept(filter_logits(logits, 2, 0.999)).tolist() == [[False, True, False, True]]


# ---------------------------------------------------------------- CLI with chosen logits

def make_data_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_dict(path / "dict.txt", TOK_CFG)
    (path / "tokenizer.json").write_text(json.dumps(TOK_CFG.to_dict()), encoding="utf-8")
    return path


def make_logits_checkpoint(data_dir: Path, path: Path, logits_of) -> Path:
    """A museformer_lm_tiny checkpoint whose next-token logits are ``logits_of(dictionary)`` at every step."""
    def edit(model, task):
        dec = model.decoder
        dec.final_norm.weight.zero_()
        dec.final_norm.bias.zero_()
        dec.final_norm.bias[0] = 1.0  # features = e_0 at every position
        dec.output_projection.weight.zero_()
        dec.output_projection.weight[:, 0] = logits_of(task.dictionary)  # so logits = this column

    return make_checkpoint(data_dir, path, edit)


def favour(*boosts):
    """logits_of: distinct small logits (token j gets -0.001 j, so top-k has no ties) plus {symbol: boost}."""
    def logits_of(d):
        logits = -0.001 * torch.arange(len(d), dtype=torch.float)
        for symbol, boost in boosts:
            logits[d.index(symbol)] += boost
        return logits
    return logits_of


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("options") / "data-bin")


def sample(data, ckpt, out, *extra):
    rc = main([str(ckpt), "--data", str(data), "--out", str(out), *GRAMMAR_OFF, *map(str, extra)])
    assert rc == 0
    return [p.read_text(encoding="utf-8").split() for p in sorted(Path(out).glob("sample_*.txt"))]


def test_temperature_scales_logits(data, tmp_path):
    """p-60 has logit +3 (about 4 % of the mass at temperature 1 over ~540 tokens); at temperature 0.05 the logits
    are multiplied by 20 and p-60 holds all but e^-60 of it."""
    ckpt = make_logits_checkpoint(data, tmp_path / "ckpt.pt", favour(("p-60", 3.0), ("</s>", -50.0)))
    cold = sample(data, ckpt, tmp_path / "cold", "--temperature", 0.05, "--top-k", 0, "--max-tokens", 60)[0]
    assert cold == ["p-60"] * 60
    warm = sample(data, ckpt, tmp_path / "warm", "--temperature", 1.0, "--top-k", 0, "--max-tokens", 60)[0]
    assert len(warm) == 60 and warm.count("p-60") < 30 and len(set(warm)) > 20


def test_top_k_on_the_cli(data, tmp_path):
    """Near-flat logits: --top-k 8 samples only the 8 most likely tokens, --top-k 0 samples from all of them."""
    ckpt = make_logits_checkpoint(data, tmp_path / "ckpt.pt", favour(("</s>", -50.0)))
    from fairseq.data import Dictionary

    d = Dictionary.load(str(data / "dict.txt"))
    top8 = {d[i] for i in range(d.nspecial, d.nspecial + 8)}  # logits decrease with the index
    k8 = sample(data, ckpt, tmp_path / "k8", "--top-k", 8, "--max-tokens", 200)[0]
    assert set(k8) <= top8 and len(set(k8)) >= 6
    k0 = sample(data, ckpt, tmp_path / "k0", "--top-k", 0, "--max-tokens", 200)[0]
    assert len(set(k0) - top8) > 50, "--top-k 0 must keep every token"


def test_min_tokens_forbids_an_early_end(data, tmp_path):
    """</s> has logit +20: without --min-tokens a piece ends at once; with --min-tokens 25 it ends at 25 tokens."""
    ckpt = make_logits_checkpoint(data, tmp_path / "ckpt.pt", favour(("</s>", 20.0)))
    assert sample(data, ckpt, tmp_path / "free", "--max-tokens", 100) == [[]]
    [piece] = sample(data, ckpt, tmp_path / "min", "--min-tokens", 25, "--max-tokens", 100)
    assert len(piece) == 25  # P(another token once </s> is allowed) < 540 e^-20


def test_max_bars_stops_at_the_bar_limit(data, tmp_path):
    """b-1 has logit +20 and </s> -50: every token closes a bar, so --max-bars 3 gives exactly 3 tokens."""
    ckpt = make_logits_checkpoint(data, tmp_path / "ckpt.pt", favour(("b-1", 20.0), ("</s>", -50.0)))
    assert sample(data, ckpt, tmp_path / "bars", "--max-bars", 3, "--max-tokens", 50) == [["b-1"] * 3]
    assert sample(data, ckpt, tmp_path / "nobar", "--max-tokens", 7) == [["b-1"] * 7]  # no bar limit by default


# ---------------------------------------------------------------- check_args errors

@pytest.fixture(scope="module")
def valid_inputs(data, tmp_path_factory):
    ckpt = make_logits_checkpoint(data, tmp_path_factory.mktemp("ck") / "ckpt.pt", favour())
    return data, ckpt


ERRORS = {
    "num-samples 0": (["--num-samples", "0"], "--num-samples must be at least 1"),
    "max-tokens 0": (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    "batch-size 0": (["--batch-size", "0"], "--batch-size must be at least 1"),
    "prompt-bars 0": (["--prompt-bars", "0"], "--prompt-bars must be at least 1"),
    "max-bars 0": (["--max-bars", "0"], "--max-bars must be at least 1"),
    "top-k -1": (["--top-k", "-1"], "--top-k must be >= 0"),
    "top-p 0": (["--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p 1.5": (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "temperature 0": (["--temperature", "0"], "--temperature must be > 0"),
    "temperature -1": (["--temperature", "-1"], "--temperature must be > 0"),
    "missing prompt": (["--prompt-midi", "nope.mid"], "--prompt-midi nope.mid does not exist"),
    "missing dict": (["--data", "{tmp}"], "no dict.txt in --data"),
    "missing checkpoint": (["{tmp}/nope.pt"], "does not exist"),
}
if not torch.cuda.is_available():
    ERRORS["cuda without a GPU"] = (["--device", "cuda"], "torch sees no CUDA device")


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_argument_error_is_one_line(case, valid_inputs, tmp_path, capsys):
    data, ckpt = valid_inputs
    extra, expected = ERRORS[case]
    extra = [x.replace("{tmp}", str(tmp_path)) for x in extra]
    positional = [x for x in extra if x.endswith(".pt")] or [str(ckpt)]
    flags = [x for x in extra if not x.endswith(".pt")]
    out = tmp_path / "out"
    rc = main([*positional, "--data", str(data), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit status {rc}"
    assert err.count("\n") == 1 and err.startswith("museformer-sample: error: ") and expected in err, err
    assert not out.exists() or not list(out.iterdir()), "nothing is written on an argument error"


def test_argument_error_exit_status_from_the_console_script(valid_inputs, tmp_path):
    data, ckpt = valid_inputs
    proc = subprocess.run([sys.executable, "-m", "museformer_tools.sample", str(ckpt), "--data", str(data),
                           "--out", str(tmp_path / "o"), "--top-p", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "museformer-sample: error: --top-p must be in (0, 1], got 2.0"


def test_piece_length_flag_and_its_old_name():
    """--max-length is the piece length (fairseq's --max-tokens is tokens per batch); --max-tokens still parses
    for one release, and messages name the flag that was typed."""
    parse = build_parser().parse_args
    new, old = parse(["c", "--out", "o", "--max-length", "7"]), parse(["c", "--out", "o", "--max-tokens", "9"])
    assert (new.max_length, new.max_length_flag) == (7, "--max-length")
    assert (old.max_length, old.max_length_flag) == (9, "--max-tokens")
    assert parse(["c", "--out", "o"]).max_length == 20480 and parse(["c", "--out", "o"]).device == "auto"
