"""``migmanagerd checkpoint``: save the node's MIG mode and layout to a file
(nvidia-mig-parted's checkpoint format, apply/checkpoint.py) for ``restore``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from migmanagerd.cli.common import add_backend, add_debug
from migmanagerd.cli.selection import open_engine
from migmanagerd.errors import EXIT_OK, UsageError


def add_checkpoint_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--checkpoint-file", default=os.environ.get("MIG_PARTED_CHECKPOINT_FILE") or None,
        help="path to the checkpoint file (required; env MIG_PARTED_CHECKPOINT_FILE)",
    )


def checkpoint_path(args: argparse.Namespace) -> str:
    if not args.checkpoint_file:
        raise UsageError("missing required flag -f/--checkpoint-file (or env MIG_PARTED_CHECKPOINT_FILE)")
    return str(args.checkpoint_file)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "checkpoint",
        help="save this node's MIG mode and layout to a checkpoint file",
        description="Write every MIG-capable GPU's MIG mode and GPU/compute instances (with placements) to a "
        "checkpoint file in nvidia-mig-parted's format; 'restore' brings that layout back. Exit 0 written, "
        "2 bad input (nothing written), 1 the node could not be read or the file written.",
    )
    add_checkpoint_file(p)
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from migmanagerd.apply.checkpoint import node_checkpoint
    from migmanagerd.atomic_file import write_atomic
    from migmanagerd.errors import MigManagerError

    path = Path(checkpoint_path(args))
    engine = open_engine(args)
    try:
        doc = node_checkpoint(engine.observe())
    finally:
        engine.backend.close()
    try:
        # the old checkpoint or the new one, never half of one
        write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644)
    except OSError as exc:
        raise MigManagerError(f"{path}: cannot write the checkpoint file: {exc.strerror or exc}") from None
    print("MIG configuration checkpointed successfully")
    return EXIT_OK
