"""``python -m rlvr`` (and ``torchrun -m rlvr``) runs the command line."""

import sys

from rlvr.cli import main

sys.exit(main())
