"""The one prepared GPU check (issue 9): CUDA tests, one FC-Attention layer vs flash SDPA, fairseq-train, sampling.

Writes ``OUT/report.md`` and ``OUT/report.json`` (and one log per part) always, also when a part fails: each part
runs in its own try/except and its failure, with the traceback, goes into the report. Exit status 0 only if every
requested part passed.

On the GPU machine, from the repository root with `.whl/` beside it (fairseq-fixed's sdist and the wheels of its
missing pure-Python dependencies, prepared as docs/benchmarks.md "GPU check" says; at most 8 minutes):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out OUT --fairseq-sdist .whl

Dry run on CPU: the same code paths at toy sizes, in under a minute (tests/test_gpu_check.py runs it):

    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check

Parts (``--parts a,b,c,d``; each has a time budget, ``BUDGET_S``, after which it stops and reports what it has):

a. ``pytest -m gpu tests/test_gpu.py`` in a subprocess: flex, sparse and dense agree on CUDA (fp32 and bf16,
   outputs and every gradient), the cached decoder equals the full forward on CUDA.
b. One FineCoarseAttention layer (512 wide, 8 heads), forward + backward, bf16, ~130-token bars, the paper's bar
   selection, 4k-32k tokens: impl flex and sparse against a causal SDPA layer on the flash kernel, in one run.
c. fairseq-train of the paper-size museformer_lm (~100 updates, 15,360-token truncation, bf16 and fp16) and of
   fairseq's transformer_lm of the same size: words/s, peak memory, torch.compile graph count.
d. Sampling tokens/s of the cached decoder (``incremental.forward_incremental``), batch 1 and batch 8.

(a) and (b) need no fairseq; (c) and (d) do: when ``import fairseq`` fails, ``--fairseq-sdist`` (a folder or file)
is installed into ``/tmp/gpu_check_fairseq_site`` (wheels first, then the sdists built with
``--no-build-isolation``; the built fairseq wheel is left in OUT, to be carried next time).

Modules: this file (arguments, the run of the parts within their budgets), ``gpu_check_common.py`` (sizes,
budgets), ``gpu_check_setup.py`` (the fairseq installer), ``gpu_check_parts.py`` (parts a, b, d),
``gpu_check_training.py`` (part c), ``gpu_check_report.py`` (report.md / report.json).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gpu_check_common import (  # noqa: E402,F401  (DRY, STATS_PREFIX, PartSkipped: tests/test_gpu_check.py)
    BUDGET_S, DRY, DRY_BUDGET_S, GPU, PARTS, STATS_PREFIX, WRAPPER_FLAG, Budget, PartFailed, PartSkipped, say)
from gpu_check_parts import part_a, part_b, part_d  # noqa: E402
from gpu_check_training import (  # noqa: E402,F401  (parse_training, tokens_ratio: tests)
    fairseq_train_wrapper, parse_training, part_c, tokens_ratio)
from gpu_check_report import header, write_report  # noqa: E402
from gpu_check_setup import ensure_fairseq, install_plan, use_path  # noqa: E402,F401  (install_plan: tests)


RUN = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Example: python benchmarks/gpu_check.py "
                                "--dry-run --out /tmp/gpu_check", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the logs (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, the same code paths (< 1 min)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of a,b,c,d (default: all)")
    p.add_argument("--fairseq-sdist", default=None, metavar="PATH",
                   help="fairseq-fixed sdist, or a folder with it and wheels of its dependencies (e.g. .whl), "
                   "installed when `import fairseq` fails")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.exit(2, f"gpu_check.py: --parts takes a comma-separated subset of a,b,c,d; got {args.parts!r}\n")
    args.parts = parts
    if args.fairseq_sdist and not Path(args.fairseq_sdist).exists():
        p.exit(2, f"gpu_check.py: --fairseq-sdist {args.fairseq_sdist} does not exist; give the fairseq-fixed sdist "
               "or the folder holding it (docs/benchmarks.md, GPU check)\n")
    if not args.dry_run and not torch.cuda.is_available():
        p.exit(2, "gpu_check.py: torch sees no CUDA GPU here; pass --dry-run to run the CPU toy version\n")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WRAPPER_FLAG]:
        fairseq_train_wrapper(argv[1:])
        return 0
    args = parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    budgets = DRY_BUDGET_S if args.dry_run else BUDGET_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = header(args, sizes)
    say(f"{head['gpu']}, torch {head['torch']}, CUDA {head['cuda']}; parts {','.join(args.parts)}")
    ctx = dict(out=out, sizes=sizes, work=Path(tempfile.mkdtemp(prefix="gpu_check_")), path=[], fairseq=False,
               fairseq_how="")
    parts: Dict[str, dict] = {}
    if {"a", "c", "d"} & set(args.parts):  # (a)'s cached-decoder test needs fairseq too
        t0 = time.perf_counter()
        setup_budget = Budget(budgets["setup"])
        with open(out / "setup.log", "w") as log:
            try:
                ctx["fairseq"], ctx["fairseq_how"], ctx["path"] = ensure_fairseq(args, out, log, setup_budget)
            except Exception as err:
                ctx["fairseq_how"] = f"fairseq set-up failed: {type(err).__name__}: {err}"
        say(f"setup: fairseq {'available' if ctx['fairseq'] else 'unavailable'} ({ctx['fairseq_how']})")
        parts["setup"] = dict(status="passed" if ctx["fairseq"] else "skipped", reason=ctx["fairseq_how"],
                              seconds=time.perf_counter() - t0, unused=max(0.0, setup_budget.left()))
        if ctx["fairseq"]:
            use_path(ctx["path"])
    carry = parts.get("setup", {}).get("unused", 0.0)
    for name in args.parts:
        # A part's budget plus what the parts before it left unused: the total stays within the sum of BUDGET_S.
        ctx["budget"] = Budget(budgets[name] + carry)
        t0 = time.perf_counter()
        say(f"part {name}: start (budget {ctx['budget'].seconds:.0f} s)")
        try:
            parts[name] = dict(status="passed", result=RUN[name](sizes, ctx))
        except PartSkipped as err:
            parts[name] = dict(status="skipped", reason=str(err))
        except PartFailed as err:
            parts[name] = dict(status="failed", reason=str(err), result=err.result)
        except Exception as err:
            parts[name] = dict(status="failed", reason=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        parts[name]["seconds"] = time.perf_counter() - t0
        carry = max(0.0, ctx["budget"].left())
        say(f"part {name}: {parts[name]['status']} in {parts[name]['seconds']:.0f} s")
        write_report(out, head, parts)  # after every part: a later crash or kill keeps what ran
    write_report(out, head, parts)
    ok = all(parts[n]["status"] == "passed" for n in args.parts)
    say(f"report: {out / 'report.md'}; {'all parts passed' if ok else 'NOT all parts passed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
