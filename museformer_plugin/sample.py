"""Deprecated import path, kept for one release: the code moved to ``museformer_tools.sample`` (run it as
``museformer-sample`` or ``python -m museformer_tools.sample``); see deprecated_paths.py."""
import sys

from .deprecated_paths import forward_main

main = forward_main("museformer_plugin.sample", __name__ == "__main__")

if __name__ == "__main__":
    sys.exit(main())
