"""museformer-import-original: the ORIGINAL Museformer's checkpoint gives the ORIGINAL's log-probabilities here.

The reference is what the original code computed for its own checkpoint (tests/data/original_model/, a reduced copy
of ../shared/data/original_model/tiny/; its README says how it was made). Two layouts (spec §2.6): ``infer`` (the
original's generation path = this project's default) and ``train`` (its training / validation path = this
project's ``--bos-in-first-bar``). The melody song of the shared folder is checked too when ../shared is there.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from needs import require_fairseq

require_fairseq()

from museformer_tools import import_original  # noqa: E402
from museformer_tools.original_checkpoint import read_original  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "original_model"
SHARED = REPO.parent / "shared" / "data" / "original_model" / "tiny"
USER_DIR = str(REPO / "museformer_plugin")
ATOL = 1e-4  # the bound; the measured difference is ~3e-6 (fp32, other summation order)
LAYOUTS = ("infer", "train")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def songs():
    """{name: (tokens, reference)}: the committed Lakh song, and the shared melody when ../shared is there.

    reference[layout] = {"target_logprobs" (T,), "row_index" (R,), "rows" (R, V)}; plus "src_tokens", "target"."""
    out = {}
    committed = torch.load(FIXTURE / "reference_logprobs.pt", weights_only=True)
    for name, ref in committed.items():
        out[name] = ((FIXTURE / f"seq_{name}.txt").read_text().split(), ref)
    if (SHARED / "seq_mel69bars.txt").is_file():
        inputs = torch.load(SHARED / "inputs_mel69bars.pt", weights_only=True)
        ref = {"src_tokens": inputs["src_tokens"], "target": inputs["target"]}
        for layout in LAYOUTS:
            full = torch.load(SHARED / f"logprobs_mel69bars_{layout}.pt", weights_only=True)
            ref[layout] = {"target_logprobs": full.gather(1, inputs["target"][:, None])[:, 0],
                           "row_index": torch.arange(full.size(0)), "rows": full}
        out["mel69bars"] = ((SHARED / "seq_mel69bars.txt").read_text().split(), ref)
    return out


SONGS = songs()


def expected_ppl(layout: str, length: int) -> float:
    """exp(mean NLL) the original's log-probs give for every song cut to its first ``length`` targets."""
    nll, count = 0.0, 0
    for tokens, ref in SONGS.values():
        target_lp = ref[layout]["target_logprobs"]
        n = min(length, len(tokens) + 1)  # a song cut at L > its length keeps all its targets, </s> included
        assert n <= len(target_lp), f"the reference scored only {len(target_lp)} targets, not {n}"
        nll -= float(target_lp[:n].double().sum())
        count += n
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "museformer_tiny.pt"
    code = import_original.main([str(FIXTURE / "checkpoint_original.pt"), "--dict", str(FIXTURE / "dict.txt"),
                                 "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    """The fixture's songs binarised with the original's dict.txt by museformer-prep binarize --dict."""
    from data_prep.cli import main as prep

    root = tmp_path_factory.mktemp("orig_data")
    split = root / "split"
    split.mkdir()
    for name in ("train", "valid", "test"):
        (split / f"{name}.txt").write_text("".join(" ".join(t) + "\n" for t, _ in SONGS.values()))
    assert prep(["binarize", str(split), str(root / "bin"), "--dict", str(FIXTURE / "dict.txt"), "--workers", "1"]) == 0
    return root / "bin"


def load(checkpoint, data_bin, **overrides):
    """(model, task) through fairseq's own loader, as fairseq-validate does."""
    from fairseq import checkpoint_utils

    import museformer_plugin  # noqa: F401

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin), **overrides})
    return models[0].eval(), task


def assert_matches(logprobs, ref, what):
    """``logprobs`` (T, V) against a reduced reference: every target log-prob and every stored full row."""
    target = ref["target"] if "target" in ref else None
    assert logprobs.size(0) == ref[what]["target_logprobs"].numel(), what
    got_target = logprobs.gather(1, target[:, None])[:, 0]
    err_t = (got_target - ref[what]["target_logprobs"]).abs().max().item()
    err_rows = (logprobs[ref[what]["row_index"]] - ref[what]["rows"]).abs().max().item()
    assert err_t < ATOL and err_rows < ATOL, f"{what}: targets {err_t:.2e}, rows {err_rows:.2e}"


def test_import_writes_a_checkpoint_every_loader_reads(imported, capsys):
    state = torch.load(imported, map_location="cpu", weights_only=True)  # fairseq's own torch.load default
    assert state["cfg"]["model"]["_name"] == "museformer_lm"
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    dict_lines = (FIXTURE / "dict.txt").read_text().split("\n")
    assert [line.split()[0] for line in state["task_state"]["dictionary"].splitlines()] == \
        [line.split()[0] for line in dict_lines if line.strip()]
    assert sum(t.numel() for t in state["model"].values()) == 204928  # the manifest's unique parameters


@pytest.mark.parametrize("impl", ["dense", "sparse", "flex"])
@pytest.mark.parametrize("song", sorted(SONGS))
def test_default_layout_equals_the_originals_generation_path(imported, data_bin, song, impl):
    model, _task = load(imported, data_bin, attention_impl=impl)
    tokens, ref = SONGS[song]
    with torch.no_grad():
        logits, _ = model(ref["src_tokens"][None])
    assert_matches(torch.log_softmax(logits[0].float(), -1), ref, "infer")


@pytest.mark.parametrize("impl", ["dense", "sparse", "flex"])
def test_bos_in_first_bar_equals_the_originals_training_path(imported, data_bin, impl):
    """Through the task's dataset and collater (fairseq-validate's path), with --bos-in-first-bar."""
    model, task = load(imported, data_bin, attention_impl=impl, bos_in_first_bar=True, truncate_test=640)
    dataset = task.load_dataset("test")
    for index in range(len(dataset)):
        sample = dataset.collater([dataset[index]])
        tokens, ref = next(v for v in SONGS.values() if torch.equal(v[1]["src_tokens"], sample["net_input"]
                                                                     ["src_tokens"][0]))
        assert int(sample["net_input"]["bar_ids"][0, 0]) == 1  # the BOS is bar 1's first token
        with torch.no_grad():
            logits, _ = model(**sample["net_input"])
        assert_matches(torch.log_softmax(logits[0].float(), -1), ref, "train")


def test_cached_decoder_equals_the_originals_generation_path(imported, data_bin):
    """The sampling path: a prompt prefilled in one call, then one token per call."""
    from museformer_plugin.incremental import forward_incremental

    model, _task = load(imported, data_bin)
    for tokens, ref in SONGS.values():
        src = ref["src_tokens"][None]
        prompt = src.size(1) // 3
        state, outs = {}, []
        with torch.no_grad():
            out, _ = forward_incremental(model.decoder, src[:, :prompt], state)
            outs.append(out[0])
            for t in range(prompt, src.size(1)):
                out, _ = forward_incremental(model.decoder, src[:, : t + 1], state)
                outs.append(out[0, -1:])
        assert_matches(torch.log_softmax(torch.cat(outs).float(), -1), ref, "infer")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_ppl_prints_the_originals_perplexity(imported, data_bin, layout, tmp_path, capsys):
    from museformer_tools import eval_ppl

    out = tmp_path / "ppl.json"
    lengths = [300, 640]
    flag = ["--bos-in-first-bar"] if layout == "train" else []
    assert eval_ppl.main([str(imported), "--data", str(data_bin), "--lengths", ",".join(map(str, lengths)),
                          "--cpu", "--json", str(out), *flag]) == 0
    results = json.loads(out.read_text())
    for length in lengths:
        want = expected_ppl(layout, length)
        got = results[str(length)]["ppl"]
        assert f"{got:.4g}" == f"{want:.4g}" or abs(got - want) <= 1e-5 * want, (length, got, want)
    printed = capsys.readouterr().out
    assert f"{results['640']['ppl']:.4f}" in printed


def test_fairseq_validate_and_eval_lm_read_the_imported_checkpoint(imported, data_bin):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    common = ["--user-dir", USER_DIR, "--task", "museformer_lm", "--path", str(imported), "--truncate-test", "640",
              "--batch-size", "1", "--cpu", "--bos-in-first-bar"]
    want_bits = math.log2(expected_ppl("train", 640))
    proc = subprocess.run(["fairseq-validate", str(data_bin), "--valid-subset", "test",
                           "--required-batch-size-multiple", "1", *common],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = float(re.search(r"valid on 'test' subset \| loss ([\d.]+)", proc.stdout + proc.stderr).group(1))
    assert abs(loss - want_bits) <= 0.0005 + 1e-6, (loss, want_bits)
    proc = subprocess.run(["fairseq-eval-lm", str(data_bin), "--gen-subset", "test", *common],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", proc.stdout + proc.stderr).group(1))
    assert abs(loss - want_bits) <= 0.00005 + 1e-6, (loss, want_bits)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_finetune_from_the_imported_checkpoint(imported, data_bin, tmp_path, layout):
    """fairseq-train --finetune-from-model: the paper's model trained further on one's own data (in the original's
    training layout too: --bos-in-first-bar through fairseq-train, backward through the layout's correction)."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    save = tmp_path / "ft"
    flag = ["--bos-in-first-bar"] if layout == "train" else []
    proc = subprocess.run(
        ["fairseq-train", str(data_bin), "--user-dir", USER_DIR, "--task", "museformer_lm", "--arch",
         "museformer_lm_tiny", "--finetune-from-model", str(imported), "--optimizer", "adam", "--lr", "1e-4",
         "--batch-size", "1", "--max-update", "1", "--cpu", "--save-dir", str(save), "--no-epoch-checkpoints",
         "--disable-validation", "--criterion", "cross_entropy", "--log-interval", "1", *flag],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    first_loss = float(re.search(r"\| loss[= ]([\d.]+)", proc.stdout + proc.stderr).group(1))
    assert first_loss < 11.0, "the first update must start from the imported weights (~10.1 bits), not random ones"
    tuned = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    start = torch.load(imported, map_location="cpu", weights_only=True)["model"]
    diff = max((tuned["model"][k] - v).abs().max().item() for k, v in start.items())
    assert 0 < diff < 1e-2, diff


def test_bos_in_first_bar_reproduces_the_bar_1_leak(imported, data_bin):
    """Perturbing a bar-1 token changes the BOS row only with --bos-in-first-bar; later tokens never leak."""
    model, _task = load(imported, data_bin)
    tokens, ref = SONGS["lmd640"]
    src = ref["src_tokens"][None]
    bar_ids, beat_ids = model.decoder.layout_ids(src)
    train_bars = bar_ids.clone()
    train_bars[:, 0] = 1
    first_bar_end = int(bar_ids[0].eq(1).nonzero().max())
    for pos, leaks in ((5, True), (first_bar_end + 10, False)):
        changed = src.clone()
        changed[0, pos] = src[0, pos + 1] if src[0, pos + 1] != src[0, pos] else src[0, pos + 2]
        cbar, cbeat = model.decoder.layout_ids(changed)
        ctrain = cbar.clone()
        ctrain[:, 0] = 1
        with torch.no_grad():
            base_infer, _ = model(src, bar_ids=bar_ids, beat_ids=beat_ids)
            new_infer, _ = model(changed, bar_ids=cbar, beat_ids=cbeat)
            base_train, _ = model(src, bar_ids=train_bars, beat_ids=beat_ids)
            new_train, _ = model(changed, bar_ids=ctrain, beat_ids=cbeat)
        assert torch.equal(base_infer[0, :pos], new_infer[0, :pos]), "the default layout must stay causal"
        earlier_changed = (base_train[0, :pos] - new_train[0, :pos]).abs().amax(-1) > 1e-4
        assert bool(earlier_changed[0]) == leaks, f"position {pos}: BOS row leak expected {leaks}"


def test_dense_masks_define_what_the_correction_computes():
    """The fast correction on top of the sparse backend equals the dense reference masks with the train rule."""
    from museformer_plugin.attention import dense, sparse
    from museformer_plugin.attention.bos_in_first_bar import bos_row_over_first_bar, first_summary_with_bos
    from museformer_plugin.bar_layout import BarLayout, BarScheme, compute_bar_ids

    gen = torch.Generator().manual_seed(3)
    bar, pad = 5, 1
    src = torch.randint(6, 20, (3, 40), generator=gen)
    for b, ends in enumerate(([6, 12, 20, 30], [3, 9, 15], [25])):
        src[b, ends] = bar
    src[:, 0] = 2
    src[2, 34:] = pad
    bar_ids, complete = compute_bar_ids(src, bar, pad)
    layout = BarLayout(bar_ids, complete, torch.tensor([True, False, True]))
    scheme = BarScheme.from_args("museformer")
    B, H, T, S, D = 3, 2, 40, layout.num_summary_slots, 8
    q, k, v = (torch.randn(B, H, T, D, generator=gen, dtype=torch.float64) for _ in range(3))
    qs, ks, vs, k2, v2 = (torch.randn(B, H, S, D, generator=gen, dtype=torch.float64) for _ in range(5))
    z_ref = dense.attend_summaries(qs, ks, vs, k, v, layout)
    z_fast = first_summary_with_bos(sparse.attend_summaries(qs, ks, vs, k, v, layout), qs, ks, vs, k, v, layout)
    assert torch.allclose(z_fast, z_ref, atol=1e-10)
    out_ref = dense.attend_regular(q, k, v, k2, v2, layout, scheme)
    out_fast = bos_row_over_first_bar(sparse.attend_regular(q, k, v, k2, v2, layout, scheme), q, k, v, layout)
    real = bar_ids.ne(-1)
    assert torch.allclose(out_fast[real.unsqueeze(1).expand(B, H, T)], out_ref[real.unsqueeze(1).expand(B, H, T)],
                          atol=1e-10)
    no_flags = BarLayout(bar_ids, complete)
    assert not torch.allclose(dense.attend_regular(q, k, v, k2, v2, no_flags, scheme)[0, :, 0], out_ref[0, :, 0])


def test_a_later_fairseqs_cfg_checkpoint_imports_the_same(imported, tmp_path):
    """The original trained under a later fairseq saves ``cfg`` (model options as a Namespace, task as a dict)."""
    state = read_original(str(FIXTURE / "checkpoint_original.pt"))
    args = vars(state.pop("args"))
    model = argparse.Namespace(**{k: v for k, v in args.items() if k != "task"}, _name=args["arch"])
    state["cfg"] = {"model": model, "task": {"_name": args["task"], "data": args["data"]}, "common": {}}
    path = _save(state, tmp_path / "cfg_form.pt")
    out = tmp_path / "from_cfg.pt"
    assert import_original.main([str(path), "--dict", str(FIXTURE / "dict.txt"), "--out", str(out)]) == 0
    ours = torch.load(out, weights_only=True)
    reference = torch.load(imported, weights_only=True)
    assert ours["cfg"]["model"] == reference["cfg"]["model"]
    assert all(torch.equal(ours["model"][k], v) for k, v in reference["model"].items())


def test_sample_the_imported_checkpoint_without_a_data_dir(tmp_path, capsys):
    """The imported checkpoint carries its dictionary and (with --tokenizer) the tokenizer settings."""
    from data_prep.config import TokenizerConfig
    from museformer_tools import sample

    paper = TokenizerConfig(instruments="lmd6", normalize_pitch=True, remove_empty_bars=True, ignore_ts=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(paper.to_dict()))
    ckpt = tmp_path / "with_tokenizer.pt"
    assert import_original.main([str(FIXTURE / "checkpoint_original.pt"), "--dict", str(FIXTURE / "dict.txt"),
                                 "--out", str(ckpt), "--tokenizer", str(tmp_path)]) == 0
    assert '"instruments": "lmd6"' in capsys.readouterr().out  # the summary names the carried settings
    out = tmp_path / "samples"
    assert sample.main([str(ckpt), "--out", str(out), "--max-length", "120", "--device", "cpu", "--threads",
                        "1"]) == 0
    tokens = (out / "sample_000.txt").read_text().split()
    assert len(tokens) == 120 and (out / "sample_000.mid").is_file()
    assert set(tokens) <= set(line.split()[0] for line in (FIXTURE / "dict.txt").read_text().splitlines())


# ------------------------------------------------------------------------------------------------- bad input
class RunsCodeWhenUnpickled:
    """An object whose unpickling would write a file: a safe loader must refuse it before running anything."""

    marker = None

    def __reduce__(self):
        return (Path(self.marker).write_text, ("unpickled!",))


def _original():
    return read_original(str(FIXTURE / "checkpoint_original.pt"))


def _save(state, path):
    torch.save(state, path)
    return path


def bad_not_a_checkpoint(tmp):
    path = tmp / "notes.pt"
    path.write_text("these are not weights\n")
    return path, None, "is truncated or not a checkpoint"


def bad_truncated(tmp):
    data = (FIXTURE / "checkpoint_original.pt").read_bytes()
    path = tmp / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path, None, "truncated or not a checkpoint"


def bad_transformer_lm(tmp):
    state = {"args": argparse.Namespace(arch="transformer_lm", task="language_modeling"),
             "model": {"decoder.embed_tokens.weight": torch.zeros(560, 8)}}
    return _save(state, tmp / "tlm.pt"), None, "arch 'transformer_lm'"


def bad_missing_tensor(tmp):
    state = _original()
    del state["model"]["decoder.layers.1.reg_fc2.bias"]
    return _save(state, tmp / "missing.pt"), None, "missing tensors: decoder.layers.1.reg_fc2.bias"


def bad_unexpected_tensor(tmp):
    state = _original()
    state["model"]["decoder.layers.0.self_attn.rel_pos.weight"] = torch.zeros(4)
    return _save(state, tmp / "unexpected.pt"), None, "unexpected tensors: decoder.layers.0.self_attn.rel_pos.weight"


def bad_not_shared(tmp):
    state = _original()
    state["model"]["decoder.layers.0.sum_fc1.weight"] = state["model"]["decoder.layers.0.sum_fc1.weight"] + 1
    return _save(state, tmp / "unshared.pt"), None, "summary stream has its own weights"


def bad_dict_size(tmp):
    lines = (FIXTURE / "dict.txt").read_text().splitlines()
    short = tmp / "dict_short.txt"
    short.write_text("\n".join(lines[:-1]) + "\n")
    return FIXTURE / "checkpoint_original.pt", short, "559 symbols"


def bad_two_summary_tokens(tmp):
    state = _original()
    state["args"].num_summary_tokens_each_chunk = 2
    return _save(state, tmp / "k2.pt"), None, "num_summary_tokens_each_chunk=2"


def bad_per_head_scheme(tmp):
    state = _original()
    state["args"].con2con = ((((-2, 0),), ((-4, 0),)),)
    return _save(state, tmp / "heads.pt"), None, "per-layer or per-head"


def bad_token_positions(tmp):
    state = _original()
    state["args"].use_token_abs_pos = True
    return _save(state, tmp / "tokpos.pt"), None, "use_token_abs_pos=True"


def bad_arbitrary_object(tmp):
    RunsCodeWhenUnpickled.marker = str(tmp / "was_unpickled")
    state = {"args": _original()["args"], "model": {}, "extra_state": RunsCodeWhenUnpickled()}
    return _save(state, tmp / "evil.pt"), None, "is not unpickled"


BAD_INPUTS = [bad_not_a_checkpoint, bad_truncated, bad_transformer_lm, bad_missing_tensor, bad_unexpected_tensor,
              bad_not_shared, bad_dict_size, bad_two_summary_tokens, bad_per_head_scheme, bad_token_positions,
              bad_arbitrary_object]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(make, tmp_path, capsys):
    checkpoint, dict_path, words = make(tmp_path)
    out = tmp_path / "out" / "imported.pt"
    code = import_original.main([str(checkpoint), "--dict", str(dict_path or FIXTURE / "dict.txt"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("museformer-import-original: error: "), err
    assert words in err, err
    assert not out.exists() and not list(tmp_path.glob("out/*"))
    assert not (tmp_path / "was_unpickled").exists(), "the loader ran code from the checkpoint"
