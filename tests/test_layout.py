"""The package layout reads as the data flow: data_prep → museformer_plugin → museformer_tools → museformer_analysis.

fairseq imports museformer_plugin in every training and validation process, so the plugin imports neither the
tools that run after training nor the analysis package, and the model files do not import the task. The two old
import paths of the tools (museformer_plugin.sample / .eval_ppl) still work for one release, with a deprecation line.
"""
import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from needs import has_fairseq

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "museformer_plugin"
# deprecated import paths, kept for one release: they import the tools at run time (importlib), when imported
SHIMS = {"sample.py", "eval_ppl.py", "deprecated_paths.py"}
LATER_STAGES = ("museformer_tools", "museformer_analysis")


def imported_modules(path: Path):
    """Every module ``path`` imports, at any depth (function-level imports included), as absolute names."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
                names += [f"{base}.{alias.name}" for alias in node.names if not node.module]
            else:
                names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(p for p in PLUGIN.rglob("*.py") if p.name not in SHIMS or p.parent != PLUGIN),
                         ids=lambda p: str(p.relative_to(PLUGIN)))
def test_plugin_imports_no_later_stage(path):
    later = [m for m in imported_modules(path) if m.split(".")[0] in LATER_STAGES]
    assert not later, f"{path.relative_to(REPO)} imports {later}: the plugin must not depend on the tools or analysis"


@pytest.mark.parametrize("name", ["model.py", "linear_lm.py"])
def test_models_do_not_import_the_task(name):
    modules = imported_modules(PLUGIN / name)
    assert "museformer_plugin.task" not in modules, f"{name} imports task.py: {modules}"


def test_the_import_scan_sees_relative_imports():
    """The scan must see what it is meant to forbid (else the two tests above could not fail)."""
    assert "museformer_plugin.bar_layout" in imported_modules(PLUGIN / "model.py")
    assert "museformer_plugin.task" in imported_modules(PLUGIN / "__init__.py")
    assert "museformer_plugin.deprecated_paths" in imported_modules(PLUGIN / "sample.py")


@pytest.mark.skipif(not has_fairseq(), reason="the shims import the tools, which import fairseq")
@pytest.mark.parametrize("name", ["sample", "eval_ppl"])
def test_old_import_paths_warn_and_reexport_main(name):
    import importlib

    sys.modules.pop(f"museformer_plugin.{name}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(f"museformer_plugin.{name}")
    new = importlib.import_module(f"museformer_tools.{name}")
    assert old.main is new.main
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning) and f"museformer_tools.{name}" in
             str(w.message)]
    assert len(moved) == 1, [str(w.message) for w in caught]


@pytest.mark.skipif(not has_fairseq(), reason="the shims import the tools, which import fairseq")
def test_old_module_entry_point_prints_one_deprecation_line():
    proc = subprocess.run([sys.executable, "-m", "museformer_plugin.eval_ppl", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "museformer-eval-ppl" in proc.stdout, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "moved to museformer_tools.eval_ppl" in line]
    assert len(lines) == 1 and lines[0].startswith("DeprecationWarning: "), proc.stderr


@pytest.mark.skipif(not has_fairseq(), reason="importing the plugin imports fairseq")
def test_importing_the_plugin_loads_no_later_stage():
    code = ("import sys, museformer_plugin; print(sorted({m.split('.')[0] for m in sys.modules} & "
            f"{set(LATER_STAGES)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
