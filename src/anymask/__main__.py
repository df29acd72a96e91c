"""`python -m anymask` (and `torchrun -m anymask train ...`)."""

import sys

from anymask.cli import main

sys.exit(main())
