"""``python -m imgclf`` (and ``torchrun -m imgclf``) runs the command line."""

import sys

from imgclf.cli.launch import main

sys.exit(main())
