"""MuseformerDataset / museformer_lm task: source/target/bar ids/beat ids, truncation, collate, errors, cache."""
import pytest
import torch

from needs import require_fairseq

require_fairseq()

from lm_data import binarize, dict_symbols, make_model, make_task  # noqa: E402

BAR1 = "t-38 o-0 i-0 p-60 d-12 v-20 o-12 i-0 p-62 d-6 v-20 b-1".split()  # 12 tokens
BAR2 = "t-38 o-6 i-25 p-64 d-6 v-20 b-1".split()  # 7 tokens
BAR3 = "t-38 o-0 i-0 p-60 d-12 v-20 b-1".split()  # 7 tokens
SONG = BAR1 + BAR2 + BAR3
SHORT = BAR2 + BAR3[:3]  # a song whose last bar is incomplete

# Worked out by hand (spec §2.1, §3): position 0 is the BOS (bar 0, beat 0); bar 1 starts after it.
EXPECTED_BAR_IDS = [0] + [1] * 12 + [2] * 7 + [3] * 7
# o-k and the tokens after it up to the next o- get k + 1; t-* and b-1 get 0.
EXPECTED_BEAT_IDS = [0, 0, 1, 1, 1, 1, 1, 13, 13, 13, 13, 13, 0, 0, 7, 7, 7, 7, 7, 0, 0, 1, 1, 1, 1, 1, 0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # The empty line must be dropped; the valid split holds songs of different lengths for collate tests.
    return binarize(tmp_path_factory.mktemp("hand"), {"train": [SONG, [], SHORT], "valid": [SONG, SHORT]})


def test_source_target_bar_and_beat_ids(data_dir):
    task = make_task(data_dir)
    ds = task.load_dataset("train")
    d = task.dictionary
    assert len(ds) == 2, "the empty song must be dropped"
    assert ds.num_dropped_empty == 1
    item = ds[0]
    song_ids = [d.index(t) for t in SONG]
    assert item["source"].tolist() == [d.eos()] + song_ids
    assert item["target"].tolist() == song_ids + [d.eos()]
    assert item["bar_ids"].tolist() == EXPECTED_BAR_IDS
    assert item["beat_ids"].tolist() == EXPECTED_BEAT_IDS
    assert ds.sizes.tolist() == [27, len(SHORT) + 1]


def test_truncation_cuts_last_bar_without_summary(data_dir):
    task = make_task(data_dir, truncate_train=16)
    ds = task.load_dataset("train")
    item = ds[0]
    d = task.dictionary
    assert item["source"].tolist() == [d.eos()] + [d.index(t) for t in SONG[:15]]
    assert item["target"].tolist() == [d.index(t) for t in SONG[:16]]
    assert item["bar_ids"].tolist() == EXPECTED_BAR_IDS[:16]
    assert item["beat_ids"].tolist() == EXPECTED_BEAT_IDS[:16]
    assert ds.sizes.tolist() == [16, len(SHORT) + 1]
    # Bar 2 is cut by the truncation: only bar 1 is complete, so only bar 1 gets a summary slot.
    model = make_model(task)
    batch = ds.collater([item])
    layout = model.decoder.build_layout(batch["net_input"]["src_tokens"], batch["net_input"]["bar_ids"])
    assert layout.num_complete_bars.tolist() == [1]
    assert layout.num_summary_slots == 1
    # Without truncation all three bars are complete.
    full = make_task(data_dir).load_dataset("train").collater([make_task(data_dir).load_dataset("train")[0]])
    layout = model.decoder.build_layout(full["net_input"]["src_tokens"], full["net_input"]["bar_ids"])
    assert layout.num_complete_bars.tolist() == [3]


def test_collate_pads_with_pad_index(data_dir):
    task = make_task(data_dir)
    ds = task.load_dataset("valid")
    d = task.dictionary
    batch = ds.collater([ds[0], ds[1]])
    net = batch["net_input"]
    assert set(net) == {"src_tokens", "src_lengths", "bar_ids", "beat_ids"}
    n_short = len(SHORT) + 1
    assert net["src_tokens"].shape == (2, 27)
    assert net["src_lengths"].tolist() == [27, n_short]
    assert (net["src_tokens"][1, n_short:] == d.pad()).all()
    assert (batch["target"][1, n_short:] == d.pad()).all()
    assert (net["bar_ids"][1, n_short:] == -1).all()
    assert (net["beat_ids"][1, n_short:] == 0).all()
    assert (net["src_tokens"][1, :n_short] != d.pad()).all()
    assert batch["ntokens"] == 27 + n_short
    assert batch["nsentences"] == 2
    assert net["bar_ids"][0].tolist() == EXPECTED_BAR_IDS
    assert net["bar_ids"][1, :n_short].tolist() == [0] + [1] * 7 + [2] * 3


@pytest.mark.parametrize("beat_mask_ts", [False, True], ids=["t-zeroed", "s-zeroed"])
def test_dataset_ids_equal_model_ids(tmp_path, beat_mask_ts):
    from lm_data import make_data_bin

    task = make_task(make_data_bin(tmp_path, num_songs=8, seed=3), beat_mask_ts=beat_mask_ts)
    ds = task.load_dataset("train")
    model = make_model(task)
    batch = ds.collater([ds[i] for i in range(len(ds))])  # padded batch of different lengths
    net = batch["net_input"]
    bar_ids, beat_ids = model.decoder.layout_ids(net["src_tokens"])
    assert torch.equal(bar_ids, net["bar_ids"])
    assert torch.equal(beat_ids, net["beat_ids"])
    assert int(net["bar_ids"].max()) >= 4 and int(net["beat_ids"].max()) > 1  # a non-trivial example


def test_beat_mask_ts_switches_zeroed_family(data_dir):
    ds = make_task(data_dir, beat_mask_ts=True).load_dataset("train")
    # t-38 now inherits the running onset id instead of 0: bar 2's t-38 follows o-12 of bar 1.
    assert ds[0]["beat_ids"].tolist()[13] == 13


def test_missing_split_names_split_and_path(data_dir):
    task = make_task(data_dir)
    with pytest.raises(FileNotFoundError, match=r"'test'.*data-bin"):
        task.load_dataset("test")


def test_dict_without_bar_token_is_rejected(tmp_path):
    symbols = [s for s in dict_symbols() if not s.startswith("b-")]
    data_dir = binarize(tmp_path, {"train": [[t for t in SONG if t != "b-1"]]}, symbols=symbols)
    with pytest.raises(ValueError, match="not built by museformer-prep"):
        make_task(data_dir)


def test_rebuilt_dataset_does_not_reuse_cache(tmp_path):
    data_dir = binarize(tmp_path, {"train": [SONG]})
    task = make_task(data_dir)
    assert task.load_dataset("train")[0]["bar_ids"].tolist() == EXPECTED_BAR_IDS
    # Re-binarise the same directory with a different song; a freshly loaded dataset must see the new ids.
    binarize(tmp_path, {"train": [BAR2 + BAR3 + BAR1]})
    ids = task.load_dataset("train")[0]["bar_ids"].tolist()
    assert ids == [0] + [1] * 7 + [2] * 7 + [3] * 12


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batches_keep_every_song(tmp_path, batch_size):
    """fairseq's default --required-batch-size-multiple 8 drops the last songs; the task must not."""
    from lm_data import make_data_bin

    task = make_task(make_data_bin(tmp_path, num_songs=17, seed=4))
    ds = task.load_dataset("train")
    itr = task.get_batch_iterator(ds, max_sentences=batch_size, required_batch_size_multiple=8)
    ids = sorted(i for batch in itr.next_epoch_itr(shuffle=False) for i in batch["id"].tolist())
    assert ids == list(range(len(ds)))
