"""The Linear Transformer baseline: chunked causal linear attention equals the O(T²) formula; the model is causal."""
import pytest
import torch

from needs import require_fairseq

require_fairseq()

from museformer_plugin.linear_lm import (  # noqa: E402
    MuseformerLinearLM,
    MuseformerLinearLMConfig,
    causal_linear_attention,
    elu_feature_map,
)


def naive_causal_linear_attention(q, k, v, eps=1e-6):
    """Reference: the full (T, T) score matrix φ(q)φ(k)ᵀ, lower-triangular, row-normalised (Katharopoulos eq. 9)."""
    T = q.size(2)
    scores = (q @ k.transpose(-1, -2)) * torch.ones(T, T).tril()  # (B, H, T, T)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (16, 4), (33, 8), (50, 64)], ids=lambda x: str(x))
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_equals_naive(T, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    q = elu_feature_map(torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64))
    k = elu_feature_map(torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64))
    v = torch.randn(2, 3, T, 6, generator=g, dtype=torch.float64)
    out = causal_linear_attention(q, k, v, chunk_size=chunk)
    ref = naive_causal_linear_attention(q.float(), k.float(), v.float())
    assert out.shape == (2, 3, T, 6)
    # float32 inside causal_linear_attention vs float32 reference: only summation order differs.
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=1e-5)


def test_chunk_size_does_not_change_result():
    g = torch.Generator().manual_seed(3)
    q, k = (elu_feature_map(torch.randn(1, 2, 40, 4, generator=g)) for _ in range(2))
    v = torch.randn(1, 2, 40, 4, generator=g)
    outs = [causal_linear_attention(q, k, v, chunk_size=c) for c in (1, 3, 16, 40, 128)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)


def test_mutation_non_causal_reference_differs():
    """The comparison can fail: dropping the causal mask from the reference must break equality."""
    g = torch.Generator().manual_seed(4)
    q, k = (elu_feature_map(torch.randn(1, 1, 12, 4, generator=g)) for _ in range(2))
    v = torch.randn(1, 1, 12, 4, generator=g)
    scores = q @ k.transpose(-1, -2)  # no tril: sees the future
    leaky = (scores @ v) / scores.sum(-1, keepdim=True)
    assert not torch.allclose(causal_linear_attention(q, k, v, chunk_size=4), leaky, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A museformer_lm task on a dict.txt only (no binarising: fast) and a small linear model."""
    from lm_data import dict_symbols, make_task, write_dict

    data_dir = tmp_path_factory.mktemp("linear")
    write_dict(data_dir / "dict.txt", dict_symbols())
    task = make_task(data_dir)
    cfg = MuseformerLinearLMConfig(decoder_layers=2, decoder_embed_dim=32, decoder_ffn_embed_dim=64,
                                   decoder_attention_heads=4, linear_chunk_size=8,
                                   max_target_positions=4096)
    torch.manual_seed(0)
    return task, MuseformerLinearLM.build_model(cfg, task).eval()


def song_batch(task, num_songs):
    """A collated batch of random REMIGEN2-like songs through the task's MuseformerDataset (bar/beat ids included)."""
    import random

    from lm_data import random_song

    from museformer_plugin.dataset import MuseformerDataset

    rng = random.Random(num_songs)
    d = task.dictionary
    items = [d.encode_line(" ".join(random_song(rng, 3, 6)), add_if_not_exist=False).long() for _ in range(num_songs)]
    dataset = MuseformerDataset(items, [len(t) for t in items], d, bar_token=task.bar_token, beat_lut=task.beat_lut,
                                shuffle=False)
    return dataset.collater([dataset[i] for i in range(num_songs)])


def test_model_is_causal(tiny_model):
    """Changing tokens at positions >= t changes no logit at positions < t (bar/beat ids derived from the tokens)."""
    task, model = tiny_model
    src = song_batch(task, 2)["net_input"]["src_tokens"]
    T = src.size(1)
    with torch.no_grad():
        logits, _ = model(src)
        for t in (1, T // 3, T - 5):
            perturbed = src.clone()
            g = torch.Generator().manual_seed(t)
            # random real symbols (never pad/eos/unk), which also changes the future's bar and beat ids
            perturbed[:, t:] = torch.randint(task.dictionary.nspecial, len(task.dictionary), perturbed[:, t:].shape,
                                             generator=g)
            perturbed[src.eq(task.dictionary.pad())] = task.dictionary.pad()
            new_logits, _ = model(perturbed)
            torch.testing.assert_close(new_logits[:, :t], logits[:, :t], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(new_logits[:, t:], logits[:, t:], atol=1e-3), "perturbation had no effect"


def test_dataset_ids_match_derived_ids(tiny_model):
    """Bar/beat ids from the dataset (training path) give the same logits as ids derived from tokens (inference),
    and right padding changes no logit of a real token."""
    task, model = tiny_model
    sample = song_batch(task, 3)
    with torch.no_grad():
        from_data, _ = model(**sample["net_input"])
        from_tokens, _ = model(sample["net_input"]["src_tokens"])
        valid = sample["target"].ne(task.dictionary.pad())
        torch.testing.assert_close(from_data[valid], from_tokens[valid], atol=1e-5, rtol=1e-5)
        for i in range(3):
            n = int(valid[i].sum())
            alone, _ = model(sample["net_input"]["src_tokens"][i : i + 1, :n])
            torch.testing.assert_close(alone[0], from_data[i, :n], atol=1e-5, rtol=1e-5)
