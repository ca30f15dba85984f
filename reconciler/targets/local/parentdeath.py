"""Children that die with weft: the parent-death signal, and the check that closes its race.

util-linux's setpriv sets PR_SET_PDEATHSIG in the child, and it survives the exec, so a weft
killed outright (SIGKILL, a crash) takes its apps and sidecars with it. The signal only covers
a parent that dies after it is set: a weft killed between the fork and setpriv's `prctl` left a
child that never got it, and ran on. So once it is set, a shell checks that the parent is still
the weft that started the child, and runs the command only then: the check `prctl(2)` itself
recommends. Either weft was alive after the signal was set (its death will deliver it), or it
was not (the check refuses).
"""

from __future__ import annotations

import os
import shutil

SETPRIV = shutil.which("setpriv")

# `$0` is the pid expected as parent; the command follows as "$@". 125: it never ran.
_CHECK = '[ "$PPID" = "$0" ] || exit 125; exec "$@"'


def still_parent(pid: int | None = None) -> list[str]:
    """The command prefix that runs what follows only while `pid` (by default this process) is
    its parent. It belongs right after the last `setpriv --pdeathsig` of a prefix: a change of
    user clears the signal, so only the last one setting it counts."""
    return ["/bin/sh", "-c", _CHECK, str(os.getpid() if pid is None else pid)]


def die_with_parent() -> list[str]:
    """The prefix that makes a child of this process get SIGTERM when it dies; empty without
    setpriv (the child then outlives a killed weft, as any child would)."""
    return [SETPRIV, "--pdeathsig", "TERM", "--", *still_parent()] if SETPRIV else []
