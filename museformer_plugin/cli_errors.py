"""Our input errors inside fairseq's CLIs (fairseq-train, fairseq-validate, fairseq-eval-lm): one line, exit 2.

fairseq's CLIs print a traceback for any exception the task raises. For our own input errors
(``MuseformerInputError``: a flag that does not fit the data) the message already says what is wrong and how to
fix it, so the traceback is noise. When the plugin is imported by one of those CLIs (fairseq imports the
``--user-dir`` while it parses the arguments, before it calls its ``main``), that CLI module's ``main`` is wrapped
to print such an error as ``PROG: error: MESSAGE`` and exit with status 2. Nothing global changes (no
``sys.excepthook``), and nothing at all in a process that is not one of those CLIs, such as museformer-sample
loading a checkpoint; the tools report their own errors. A multi-GPU run's worker processes keep the traceback.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys

from .fairseq_compat import running_cli_modules

# The fairseq CLI modules whose ``main(cfg)`` runs the task on user data.
FAIRSEQ_CLIS = ("fairseq_cli.train", "fairseq_cli.validate", "fairseq_cli.eval_lm")


class MuseformerInputError(ValueError):
    """Bad user input found inside fairseq's CLIs (a flag that does not fit the data); the message is one line."""


class OneLineErrors:
    """A fairseq CLI's ``main`` that prints a ``MuseformerInputError`` as one line and exits with status 2 (other
    errors unchanged).

    Picklable as the CLI's own ``main``: fairseq's multi-GPU spawn pickles the ``main`` it calls, and a worker
    process unpickles the function of a freshly imported CLI module (so the workers keep fairseq's traceback).
    """

    def __init__(self, cli_module: str, main):
        self.cli_module, self.main = cli_module, main
        functools.update_wrapper(self, main)

    def __call__(self, *args, **kwargs):
        try:
            return self.main(*args, **kwargs)
        except MuseformerInputError as err:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fairseq"
            sys.stdout.flush()
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    def __reduce__(self):
        return cli_main_function, (self.cli_module,)


def cli_main_function(cli_module: str):
    """``main`` of the fairseq CLI module ``cli_module`` (how a pickled ``OneLineErrors`` is restored)."""
    return importlib.import_module(cli_module).main


def install() -> None:
    """Wrap ``main`` of the fairseq CLI this process runs, if any (idempotent)."""
    for mod in running_cli_modules(FAIRSEQ_CLIS):
        main = getattr(mod, "main", None)
        if main is not None and not isinstance(main, OneLineErrors):
            mod.main = OneLineErrors(mod.__spec__.name, main)
