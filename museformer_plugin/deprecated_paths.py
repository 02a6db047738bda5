"""The old import paths of the tools that moved to ``museformer_tools`` (kept for one release).

``museformer_plugin.sample`` and ``museformer_plugin.eval_ppl`` are two-line shims over ``forward_main``. The
tools package is imported only when such a shim is (the plugin's ``__init__`` never imports one), so fairseq's
processes never load it.
"""
import importlib
import sys
import warnings


def forward_main(old_module: str, run_as_script: bool):
    """``main`` of the tool that replaced ``old_module``, after one deprecation line: a DeprecationWarning when the
    old module is imported, a line on stderr when it is run with ``python -m``."""
    new_module = old_module.replace("museformer_plugin.", "museformer_tools.", 1)
    message = f"{old_module} moved to {new_module}; this old path is removed in the next release"
    if run_as_script:
        print(f"DeprecationWarning: {message}", file=sys.stderr)  # the one line, also when warnings are filtered
    else:
        warnings.warn(message, DeprecationWarning, stacklevel=3)  # points at the module that imported the old path
    return importlib.import_module(new_module).main
