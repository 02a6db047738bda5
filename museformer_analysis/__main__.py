"""`python -m museformer_analysis` = `museformer-analyze`."""
import sys

from .cli import main

sys.exit(main())
