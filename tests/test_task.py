"""museformer_lm task: songs longer than --max-tokens (issue 12 §2) and the valid/test truncation default.

fairseq's Cython batcher asserts "Sentences lengths should not exceed max_tokens" on a song longer than
--max-tokens; the task must say which subset, how long, and the fixes, before fairseq does.
"""
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from lm_data import REPO_ROOT, binarize, make_task, random_song  # noqa: E402
from museformer_plugin.cli_errors import MuseformerInputError  # noqa: E402

MAX_TOKENS = 256


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Short training songs; valid and test each hold one song far longer than MAX_TOKENS."""
    rng = random.Random(3)
    short = [random_song(rng, 2, 4) for _ in range(12)]
    long_song = random_song(rng, 40, 40)
    assert len(long_song) > 2 * MAX_TOKENS
    splits = {"train": short[:8], "valid": short[8:10] + [long_song], "test": short[10:] + [long_song]}
    return binarize(tmp_path_factory.mktemp("long_valid"), splits)


def batched_songs(task, split, max_tokens=MAX_TOKENS, ignore=False):
    dataset = task.load_dataset(split)
    itr = task.get_batch_iterator(dataset, max_tokens=max_tokens, max_positions=task.max_positions(),
                                  ignore_invalid_inputs=ignore).next_epoch_itr(shuffle=False)
    return sum(len(batch["id"]) for batch in itr if batch)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_too_long_eval_song_is_one_clear_error(data_dir, split):
    task = make_task(data_dir)  # no --truncate-* at all: whole songs
    longest = int(task.load_dataset(split).sizes.max())
    with pytest.raises(MuseformerInputError) as err:
        batched_songs(task, split)
    msg = str(err.value)
    assert "\n" not in msg
    for part in (f"subset {split!r}", f"song of {longest} tokens", f"--max-tokens {MAX_TOKENS}",
                 f"--truncate-{split} N", "--skip-invalid-size-inputs-valid-test", f"--max-tokens {longest}"):
        assert part in msg, f"{part!r} missing from: {msg}"


def test_skip_invalid_size_skips_only_the_long_song(data_dir, caplog):
    task = make_task(data_dir)
    with caplog.at_level(logging.WARNING):
        assert batched_songs(task, "valid", ignore=True) == 2  # of 3: the long one is skipped
    assert "1 samples have invalid sizes and will be skipped" in caplog.text  # fairseq's own count


def test_too_long_training_song_is_an_error_even_when_fairseq_would_skip(data_dir):
    """fairseq always passes ignore_invalid_inputs for training; a training song must not be dropped silently."""
    task = make_task(data_dir)
    with pytest.raises(MuseformerInputError) as err:
        batched_songs(task, "train", max_tokens=16, ignore=True)
    assert "subset 'train'" in str(err.value) and "--truncate-train N" in str(err.value)
    assert "--skip-invalid-size-inputs-valid-test" not in str(err.value)


def test_valid_and_test_truncation_default_to_train(data_dir, caplog):
    task = make_task(data_dir, truncate_train=100)
    with caplog.at_level(logging.INFO, logger="museformer_plugin.task"):
        for split in ("valid", "test"):
            assert int(task.load_dataset(split).sizes.max()) == 100
            assert batched_songs(task, split) == 3  # nothing skipped, no error
    assert "--truncate-valid not set: valid songs are cut to --truncate-train 100 tokens" in caplog.text
    assert "--truncate-test not set" in caplog.text
    # An explicit value wins, and without --truncate-train nothing is cut.
    assert int(make_task(data_dir, truncate_train=100, truncate_valid=300).load_dataset("valid").sizes.max()) == 300
    full = int(make_task(data_dir).load_dataset("valid").sizes.max())
    assert full > 2 * MAX_TOKENS


def fairseq_train(data_dir, tmp_path, *extra):
    script = Path(sys.executable).parent / "fairseq-train"
    cmd = [str(script) if script.exists() else sys.executable, *([] if script.exists() else ["-m", "fairseq_cli.train"])]
    args = [str(data_dir), "--user-dir", str(REPO_ROOT / "museformer_plugin"), "--task", "museformer_lm",
            "--arch", "museformer_lm_tiny", "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1",
            "--save-dir", str(tmp_path / "ckpt"), "--no-save", "--num-workers", "0", "--max-tokens", str(MAX_TOKENS),
            "--log-format", "simple", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_fairseq_train_cli(data_dir, tmp_path):
    """The issue's command shape: --truncate-train with --max-tokens runs; an explicit too-long valid is one line."""
    proc = fairseq_train(data_dir, tmp_path, "--truncate-train", "128")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "--truncate-valid not set" in proc.stdout + proc.stderr

    proc = fairseq_train(data_dir, tmp_path, "--truncate-train", "128", "--truncate-valid", "100000")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "subset 'valid'" in errors[0] and "--truncate-valid N" in errors[0], proc.stderr


def test_fairseq_cli_main_prints_our_input_errors_as_one_line(capsys):
    """The wrapper the plugin puts on a running fairseq CLI's main: one line and exit 2 for our input errors, other
    errors unchanged, and it pickles as the CLI's own main (fairseq's multi-GPU spawn pickles main)."""
    import pickle

    import fairseq_cli.validate

    from museformer_plugin.cli_errors import OneLineErrors

    def main(cfg):
        if cfg == "bad input":
            raise MuseformerInputError("--truncate-valid 9 is too long")
        raise KeyError(cfg)

    wrapped = OneLineErrors("fairseq_cli.validate", main)
    with pytest.raises(SystemExit) as exit_info:
        wrapped("bad input")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(": error: --truncate-valid 9 is too long\n")
    with pytest.raises(KeyError):
        wrapped("another error")
    assert pickle.loads(pickle.dumps(wrapped)) is fairseq_cli.validate.main
