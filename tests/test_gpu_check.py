"""benchmarks/gpu_check.py keeps working: its CPU dry run writes a full report, and its pieces parse and plan right.

The dry run (``--dry-run``: CPU, toy sizes, every part's code path) takes well under a minute on an idle 2-core
machine; the GPU run itself needs a CUDA machine (docs/benchmarks.md, "GPU check").
"""
import json
import subprocess
import sys

import pytest
from needs import require_fairseq

require_fairseq()  # the dry run's part (c) trains through fairseq-train

from lm_data import REPO_ROOT  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=240, cwd=REPO_ROOT)
    return proc, out


def test_dry_run_writes_a_full_report(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, f"gpu_check --dry-run exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    parts = report["parts"]
    for name in "abcd":
        assert parts[name]["status"] == "passed", f"part {name}: {parts[name]}"
        assert f"## {name}: passed" in md
    assert report["header"]["torch"] and "--dry-run" in report["header"]["command"]

    assert "skipped" in parts["a"]["result"]["summary"]  # no CUDA here: the GPU tests skip themselves
    rows = parts["b"]["result"]["rows"]
    assert [r["length"] for r in rows] == list(gpu_check.DRY.layer_lengths)
    for r in rows:
        for method in ("sdpa", "flex", "sparse"):
            assert r[method]["median_ms"] > 0 and r[method]["n"] == gpu_check.DRY.repeats
        assert r["flex/sdpa time"] > 0 and r["sparse/sdpa time"] > 0
    runs = parts["c"]["result"]["runs"]
    assert set(runs) == {f"{m} {p}" for m in ("museformer_lm", "transformer_lm") for p in ("fp32", "bf16")}
    for name, r in runs.items():
        assert r["updates"] == gpu_check.DRY.updates and r["wps"] > 0 and r["rss_peak_mib"] > 0, name
    for prec, cmp in parts["c"]["result"]["tokens_per_batch_comparison"].items():
        assert cmp["peak ratio"] > 0, prec
    assert [r["batch"] for r in parts["d"]["result"]["rows"]] == [1, 8]
    assert all(r["tokens_per_s"] > 0 for r in parts["d"]["result"]["rows"])
    assert "| 256 |" in md and "tokens/s" in md


def test_bad_parts_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(["--out", "x", "--dry-run", "--parts", "a,e"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_check.py: --parts takes a comma-separated subset of a,b,c,d; got 'a,e'"]


def test_install_plan(tmp_path):
    """Wheels first; sdists (fairseq's and antlr4's, which has no wheel) built into wheels without isolation."""
    for name in ("hydra_core-1.3.2-py3-none-any.whl", "antlr4-python3-runtime-4.9.3.tar.gz",
                 "fairseq_fixed-0.12.3.1.tar.gz"):
        (tmp_path / name).write_text("")
    target, wheels = tmp_path / "site", tmp_path / "built"
    install, build, install_built = gpu_check.install_plan(tmp_path, target, wheels)
    assert install[-1].endswith("hydra_core-1.3.2-py3-none-any.whl") and "--no-deps" in install
    assert install[install.index("--target") + 1] == str(target)
    assert build[3] == "wheel" and "--no-build-isolation" in build and build[build.index("-w") + 1] == str(wheels)
    assert build[-2:] == [str(tmp_path / "antlr4-python3-runtime-4.9.3.tar.gz"),
                          str(tmp_path / "fairseq_fixed-0.12.3.1.tar.gz")]
    assert install_built[-2:] == ["antlr4-python3-runtime", "fairseq_fixed"] and "--find-links" in install_built

    (tmp_path / "fairseq_fixed-0.12.3.1-cp312-cp312-linux_x86_64.whl").write_text("")  # a wheel built earlier
    plan = gpu_check.install_plan(tmp_path, target, wheels)
    assert not any("fairseq_fixed-0.12.3.1.tar.gz" in arg for cmd in plan for arg in cmd)

    (tmp_path / "fairseq_fixed-0.12.3.1-cp312-cp312-linux_x86_64.whl").unlink()
    (tmp_path / "fairseq_fixed-0.12.3.1.tar.gz").unlink()
    with pytest.raises(gpu_check.PartSkipped, match="no fairseq_fixed wheel"):
        gpu_check.install_plan(tmp_path, target, wheels)


def test_training_log_parsing():
    """Words/s: the median over the log intervals after the first (start-up, compilation); graph count per update."""
    recs = [dict(num_updates=10 * i, wps=w, wpb=15360.0, loss=9.0 - i) for i, w in enumerate((50.0, 900.0, 1000.0,
                                                                                              1100.0), 1)]
    stats = dict(peak_mib=9000.0, rss_peak_mib=3000.0, after_update_mib=1000.0, graphs_per_update=[2, 2, 4] + [4] * 37,
                 dynamo={"frames": {"total": 4}})
    text = "\n".join(["INFO:fairseq noise {not json"] + [f"INFO:train_inner | {json.dumps(r)}" for r in recs]
                     + [gpu_check.STATS_PREFIX + json.dumps(stats)])
    r = gpu_check.parse_training("museformer_lm bf16", text, 0, interrupted=False)
    assert r["wps"] == 1000.0 and r["updates"] == 40 and r["loss_first"] == 8.0 and r["loss_last"] == 5.0
    assert r["graphs"] == 4 and r["last_new_graph_at_update"] == 3 and r["peak_mib"] == 9000.0
    with pytest.raises(RuntimeError, match="exited 1"):
        gpu_check.parse_training("x", "Traceback ...", 1, interrupted=False)
    # interrupted at the time budget after some logged updates: those still count
    assert gpu_check.parse_training("x", text, -2, interrupted=True)["updates"] == 40


def test_tokens_ratio():
    mf = dict(peak_mib=3000.0, after_update_mib=1000.0, wpb=15000.0)  # 2000 MiB of activations
    tf = dict(peak_mib=9000.0, after_update_mib=1000.0, wpb=15000.0)  # 8000 MiB
    r = gpu_check.tokens_ratio(mf, tf)
    assert r["tokens ratio"] == pytest.approx(4.0) and r["peak ratio"] == pytest.approx(3.0) and r["goal"] == 3.0
    assert gpu_check.tokens_ratio({}, tf)["tokens ratio"] is None
