"""Our input errors inside fairseq's CLIs (fairseq-train, fairseq-validate): one line and exit status 2."""
from __future__ import annotations

import os
import sys


class MuseformerInputError(ValueError):
    """Bad user input found inside fairseq's CLIs (a flag that does not fit the data); the message is one line."""


def install_one_line_errors() -> None:
    """Under a fairseq CLI, print an uncaught ``MuseformerInputError`` as one line and exit with status 2.

    fairseq-train / fairseq-validate print a traceback for any exception raised by the task. For our own input
    errors the message already says what is wrong and how to fix it, so the traceback is noise. Any other exception
    keeps the previous hook (the traceback). Idempotent.
    """
    previous = sys.excepthook
    if getattr(previous, "museformer_one_line", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, MuseformerInputError):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fairseq"
            sys.stdout.flush()
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
            os._exit(2)  # an exit status from an excepthook: SystemExit is not honoured there
        previous(exc_type, exc, tb)

    hook.museformer_one_line = True
    sys.excepthook = hook
