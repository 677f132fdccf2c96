"""``python -m lunet.cli``: the ``lunet`` command (as ``torchrun`` starts it)."""

import sys

from lunet.cli import main

sys.exit(main())
