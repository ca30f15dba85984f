"""What several command groups share: where state lives, reading intent from PATH [--ref],
printing diagnostics relative to where the user is, and duration flags."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from reconciler import intent

# What `add_subparsers()` returns: each command group adds its commands to it.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def state_dir(value: str | None) -> Path:
    """--state-dir, else $WEFT_STATE_DIR, else $XDG_STATE_HOME/weft (~/.local/state/weft)."""
    if value:
        return Path(value)
    if os.environ.get("WEFT_STATE_DIR"):
        return Path(os.environ["WEFT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "weft"


def add_intent_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("path", help="intent directory (with --ref: a folder of a git repository)")
    c.add_argument("--ref", help="read the intent at this branch, tag or commit of a git repo")


def snapshot(args: argparse.Namespace) -> intent.files.Snapshot:
    path = Path(args.path)
    if args.ref:
        return intent.files.from_git(path, args.ref)
    return intent.files.from_directory(path)


def print_diagnostics(
    diagnostics: Sequence[intent.Diagnostic], root: str, files: Sequence[str] = ()
) -> None:
    for d in diagnostics:
        print(rooted(d, root, files), file=sys.stderr)


def rooted(d: intent.Diagnostic, root: str, files: Sequence[str] = ()) -> str:
    """Diagnostics name repository-relative files; print them relative to where the user is.

    Positions inside the message ("first defined at mesh.yaml:2:1") are rooted the same way, so
    every path on the line can be opened from the same place."""
    if root in (".", ""):
        return str(d)
    prefix = root.rstrip("/") + "/"
    message = d.message
    if files:
        names = "|".join(re.escape(f) for f in sorted(files, key=len, reverse=True))
        message = re.sub(rf"(?<![\w./-])({names})(?=:\d+:\d+)", lambda m: prefix + m[1], message)
    position = d.position
    if not position.file.startswith("<"):
        position = dataclasses.replace(position, file=prefix + position.file)
    return str(dataclasses.replace(d, position=position, message=message))


def load(args: argparse.Namespace) -> intent.Intent | None:
    """The intent at PATH [--ref], its diagnostics printed; None when it has errors."""
    try:
        snap = snapshot(args)
        mesh, diagnostics = intent.check(snap)
    except intent.IntentError as e:
        print_diagnostics(e.diagnostics, ".")
        return None
    print_diagnostics(diagnostics, args.path, [f.path for f in snap.files])
    return mesh


def duration(value: str) -> datetime.timedelta:
    """A duration flag in intent's syntax ("90s", "8h"), or 0."""
    if value in ("0", "0s"):
        return datetime.timedelta(0)
    try:
        return datetime.timedelta(milliseconds=intent.model.parse_duration(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
