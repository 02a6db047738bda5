"""GPU check set-up: install fairseq-fixed from a carried sdist and wheels when `import fairseq` fails."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple



from gpu_check_common import Budget, PartSkipped, say


def have_fairseq(extra_path: List[str]) -> bool:
    """Whether ``import fairseq, fairseq_cli.train`` works with ``extra_path`` in front (in a subprocess: a
    half-built install must not break this process)."""
    code = "import fairseq, fairseq_cli.train"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_path + [os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


def install_plan(source: Path, target: Path, wheel_dir: Path) -> List[List[str]]:
    """pip commands that put fairseq-fixed and the packages beside it into ``target``.

    Every wheel in ``source`` (a folder, or one file) is installed first, with ``--no-deps``. The sdists (fairseq's,
    unless a fairseq_fixed wheel is there, and pure-Python ones that have no wheel, e.g.
    antlr4-python3-runtime 4.9.3) are then built into wheels in ``wheel_dir`` against the packages already
    importable (``--no-build-isolation``: the GPU machine has no network) and installed: a built fairseq wheel
    in the report folder can be carried next time instead of the sdist, which saves its build."""
    files = sorted(source.iterdir()) if source.is_dir() else [source]
    wheels = [f for f in files if f.name.endswith(".whl")]
    sdists = [f for f in files if f.name.endswith((".tar.gz", ".zip"))]
    fairseq_wheel = any(w.name.startswith("fairseq_fixed") for w in wheels)
    if not fairseq_wheel:
        if not any(f.name.startswith("fairseq") for f in sdists):
            raise PartSkipped(f"--fairseq-sdist {source} holds no fairseq_fixed wheel and no fairseq*.tar.gz sdist")
    else:
        sdists = [f for f in sdists if not f.name.startswith("fairseq")]
    pip = [sys.executable, "-m", "pip"]
    quiet = ["-q", "--no-index", "--no-deps", "--no-cache-dir"]
    install = pip + ["install"] + quiet + ["--no-compile", "--upgrade", "--target", str(target)]
    plan = [install + [str(w) for w in wheels]] if wheels else []
    if sdists:
        plan.append(pip + ["wheel"] + quiet + ["--no-build-isolation", "-w", str(wheel_dir)] + [str(f) for f in sdists])
        plan.append(install + ["--find-links", str(wheel_dir)] + [sdist_name(f) for f in sdists])
    return plan


def sdist_name(sdist: Path) -> str:
    """The project name of an sdist file name (``fairseq_fixed-0.12.3.1.tar.gz`` -> ``fairseq_fixed``)."""
    return re.sub(r"-[0-9][^-]*\.(tar\.gz|zip)$", "", sdist.name)


def ensure_fairseq(args, out: Path, log, budget: Budget) -> Tuple[bool, str, List[str]]:
    """(available, how, extra sys.path entries) for fairseq, installing it from --fairseq-sdist when needed."""
    target = Path(tempfile.gettempdir()) / "gpu_check_fairseq_site"  # kept: a second run on a warm machine reuses it
    if importlib.util.find_spec("fairseq") is not None:  # installed here (its import is tested by the parts)
        return True, "already importable", []
    if target.is_dir() and have_fairseq([str(target)]):
        return True, f"installed earlier into {target}", [str(target)]
    if not args.fairseq_sdist:
        return False, "fairseq is not installed and no --fairseq-sdist was given", []
    source = Path(args.fairseq_sdist)
    if not source.exists():
        return False, f"--fairseq-sdist {source} does not exist", []
    # CUDA_HOME would make fairseq's setup.py build its CUDA extensions with nvcc (minutes; not needed here).
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOME"}
    env.update(MAX_JOBS=str(os.cpu_count() or 4), PYTHONPATH=os.pathsep.join([str(target), env.get("PYTHONPATH", "")]))
    for cmd in install_plan(source, target, out):
        say("setup: pip " + cmd[3] + " " + " ".join(Path(c).name for c in cmd[4:] if not c.startswith("-"))[-200:])
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(5.0, budget.left()))
        if proc.returncode != 0:
            return False, f"pip install failed (exit {proc.returncode}); see setup.log", []
    if not have_fairseq([str(target)]):
        return False, f"installed into {target}, but `import fairseq` still fails; see setup.log", []
    return True, f"installed from {source} into {target}", [str(target)]


def use_path(extra: List[str]) -> None:
    """Make ``extra`` importable in this process too (the parts that build data or models with fairseq)."""
    for p in reversed(extra):
        if p not in sys.path:
            sys.path.insert(0, p)
    importlib.invalidate_caches()
