"""Deprecated import path, kept for one release: the code moved to ``museformer_tools.sample``.

The console script ``museformer-sample`` and ``python -m museformer_tools.sample`` run it.
This shim is the only plugin module that imports the tools package, and only when it is imported by name
(the plugin's ``__init__`` never imports it).
"""
import sys
import warnings

MOVED = "museformer_plugin.sample moved to museformer_tools.sample; this old path is removed in the next release"

if __name__ == "__main__":
    print(f"DeprecationWarning: {MOVED}", file=sys.stderr)  # the one line, also when warnings are filtered
else:
    warnings.warn(MOVED, DeprecationWarning, stacklevel=2)

from museformer_tools.sample import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
