"""``python -m bsc``: the ``bsc`` command."""

import sys

from bsc.cli import main

sys.exit(main())
