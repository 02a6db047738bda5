"""run_scripts/ as a new user meets them: one convention, --help with nothing set, and the README's first command.

Every script is run from a shell whose PATH does not hold the venv (common.sh must find the project's .venv):
`make demo` (demo.sh, which runs train.sh and eval_ppl.sh) end to end at toy size, then prepare_data.sh, sample.sh and
compare.sh (train.sh + eval_ppl.sh for each preset) once each on what the demo wrote.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "run_scripts"
ALL = ["prepare_data", "train", "eval_ppl", "sample", "compare", "demo"]
# The required inputs of each script, all given as VARIABLE=value.
REQUIRED = {"prepare_data": ["MIDI_DIR", "DATA_BIN"], "train": ["DATA_BIN"], "eval_ppl": ["CHECKPOINT", "DATA_BIN"],
            "sample": ["CHECKPOINT", "DATA_BIN"], "compare": ["DATA_BIN"]}
BARE_PATH = "/usr/bin:/bin"  # no venv on it


def bare_env(**overrides):
    """The test's environment with PATH reset to the system's (no venv), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=BARE_PATH, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_script(name, *args, cwd=None, timeout=300, **env):
    return subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), *map(str, args)], env=bare_env(**env),
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("name", ALL)
def test_help_with_no_variable_set(name):
    proc = subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), "--help"], env={"PATH": BARE_PATH},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and proc.stderr == ""
    text = (SCRIPTS / f"{name}.sh").read_text()
    assigned = re.findall(r'^([A-Z_]+)="\$\{\1[:-]', text, flags=re.M) + REQUIRED.get(name, [])
    missing = [v for v in assigned if not re.search(rf"^\s+{v}\b", proc.stdout, flags=re.M)]
    assert not missing, f"{name}.sh --help does not describe {missing}"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_one_convention_for_inputs(name, tmp_path):
    """Required inputs are variables: a missing one, or an old-style positional path, is one line and exit 2."""
    usage = re.search(r"^# Usage: +(.*)$", (SCRIPTS / f"{name}.sh").read_text(), flags=re.M).group(1)
    assert usage.startswith(" ".join(f"{v}=" for v in REQUIRED[name])[:4]) and f"run_scripts/{name}.sh" in usage
    for var in REQUIRED[name]:
        assert f"{var}=" in usage.split("bash")[0], f"{name}.sh Usage line does not set {var}: {usage}"
    given = {}
    for var in REQUIRED[name]:
        proc = run_script(name, cwd=tmp_path, **given)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"{name}.sh: {var} is not set" in proc.stderr
        given[var] = tmp_path
    proc = run_script(name, "some/path", cwd=tmp_path, **given)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "inputs are variables, not positional arguments (got 'some/path')" in proc.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`bash run_scripts/demo.sh` at toy size: 10 chorales, ~3 s of training, 2 sampled bars."""
    require_fairseq()
    pytest.importorskip("music21", reason="the demo corpus needs music21 (the `corpus` extra, `make install`)")
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("the run_scripts find the project's .venv (made by `make install`); there is none here")
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo_out"
    proc = run_script("demo", cwd=tmp, timeout=600, OUT=out, LIMIT=10, TRAIN_MINUTES=0.05, LENGTHS="64,256",
                      SAMPLE_BARS=2, SAMPLE_MAX_TOKENS=300, WORKERS=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp, out, proc.stdout + proc.stderr


def test_demo_end_to_end(demo):
    import miditoolkit

    _, out, log = demo
    assert "=== [" in log and "done in" in log
    # eval_ppl.sh and train.sh ran inside the demo (and again inside compare.sh below), from the same bare PATH.
    assert "+ museformer-eval-ppl " in log and "+ fairseq-train " in log, log[-3000:]
    ppl = json.loads((out / "ppl.json").read_text())
    assert sorted(ppl, key=int) == ["64", "256"]
    for r in ppl.values():
        assert r["songs"] >= 1 and r["tokens"] > 0 and 1.0 < r["ppl"] < 1e4, r
    mids = sorted((out / "samples").glob("*.mid"))
    assert mids, log[-3000:]
    midi = miditoolkit.MidiFile(str(mids[0]))  # readable
    tokens = (out / "samples" / (mids[0].stem + ".txt")).read_text().split()
    assert tokens and all(re.fullmatch(r"[a-z]-\d+", t) for t in tokens), tokens[:20]
    assert midi.ticks_per_beat > 0
    # the run's report page, printed at the end, with the samples' pictures and the perplexity table
    page = out / "report" / "index.html"
    assert f"report:         {page}" in log and page.is_file(), log[-3000:]
    html = page.read_text()
    assert f'src="pieces/{mids[0].stem}.png"' in html and "<h2>Perplexity</h2>" in html


def test_prepare_data_script(demo):
    tmp, out, _ = demo
    proc = run_script("prepare_data", cwd=tmp, MIDI_DIR=out / "midi", DATA_BIN=tmp / "prep", WORKERS=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name in ("dict.txt", "tokenizer.json", "train.bin", "train.idx", "valid.bin", "test.idx"):
        assert (tmp / "prep" / name).is_file(), name
    assert (tmp / "prep" / "dict.txt").read_bytes() == (out / "data-bin" / "dict.txt").read_bytes()


def test_sample_script(demo):
    tmp, out, _ = demo
    proc = run_script("sample", cwd=tmp, CHECKPOINT=out / "checkpoints" / "checkpoint_best.pt",
                      DATA_BIN=out / "data-bin", OUT=tmp / "samples", NUM_SAMPLES=1, MIN_TOKENS=0, MAX_TOKENS=40)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp / "samples" / "sample_000.mid").is_file()
    assert 1 <= len((tmp / "samples" / "sample_000.txt").read_text().split()) <= 40


def test_compare_script(demo):
    tmp, out, _ = demo
    proc = run_script("compare", cwd=tmp, timeout=600, DATA_BIN=out / "data-bin", PRESETS="museformer", SIZE="tiny",
                      MAX_UPDATE=2, LENGTHS=64, DEVICE="cpu", MAX_TOKENS=2048, TRUNCATE_TRAIN=2048,
                      TRUNCATE_VALID=2048, WARMUP=1, SAVE_INTERVAL_UPDATES=2, NUM_WORKERS=0, TENSORBOARD_DIR="",
                      OUT_DIR=tmp / "compare", RESULTS_MD=tmp / "results.md")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((tmp / "compare" / "museformer" / "ppl.json").read_text())["64"]["tokens"] > 0
    table = (tmp / "results.md").read_text()
    assert "museformer" in table and "DATA_BIN=" in table


def test_scripts_ran_without_the_venv_on_path():
    """The runs above used PATH=/usr/bin:/bin; make sure that really holds no fairseq-train or museformer-prep."""
    for tool in ("fairseq-train", "museformer-prep", "museformer-eval-ppl", "museformer-sample"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], env={"PATH": BARE_PATH}, capture_output=True)
        assert found.returncode != 0, f"{tool} is on {BARE_PATH}; the test would not show that common.sh finds .venv"
    assert os.path.dirname(sys.executable) not in BARE_PATH.split(":")
