"""`python -m reconciler.cli`: the `weft` command, as tests and `weft up`'s children run it."""

import sys

from reconciler.cli import main

sys.exit(main())
