"""`python -m reconciler.sidecar`: the sidecar without the rest of the CLI loaded."""

import sys

from reconciler.sidecar import command

sys.exit(command.main())
