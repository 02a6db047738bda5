"""Deprecated import path, kept for one release: the code moved to ``museformer_tools.eval_ppl`` (run it as
``museformer-eval-ppl`` or ``python -m museformer_tools.eval_ppl``); see deprecated_paths.py."""
import sys

from .deprecated_paths import forward_main

main = forward_main("museformer_plugin.eval_ppl", __name__ == "__main__")

if __name__ == "__main__":
    sys.exit(main())
