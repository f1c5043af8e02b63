"""Run as `python -m tests.stalled_save SECONDS [train flags]`: `python -m jaxtrade.train` with
every checkpoint save stalled for SECONDS after Orbax has started writing and before it
commits, so that a test can hard-kill the process with a save in flight.

The stall is one more item in each save: a JSON item that, once written into the save's
temporary directory, prints `STALL_LINE` and sleeps. Orbax renames the temporary
directory only when every item is written, so the save cannot commit during the stall.
Nothing here is part of the package: the patch lives in this process only.
"""

import asyncio
import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from jaxtrade.engine.console import emit

STALL_LINE = "test: checkpoint save stalled before its commit"  # printed once per save


class _StallingJsonHandler(ocp.handlers.JsonCheckpointHandler):
    """Writes a JSON item, then waits `x["seconds"]` before letting the save commit."""

    async def _save_fn(self, x, directory):
        await super()._save_fn(x, directory)
        emit(f"{STALL_LINE} ({directory})\n")  # one write: the line stays whole
        await asyncio.sleep(float(x["seconds"]))


@ocp.args.register_with_handler(_StallingJsonHandler, for_save=True)
@dataclasses.dataclass
class _StallingJsonSave(ocp.args.CheckpointArgs):
    item: Mapping[str, Any]


@ocp.args.register_with_handler(_StallingJsonHandler, for_restore=True)
@dataclasses.dataclass
class _StallingJsonRestore(ocp.args.CheckpointArgs):  # Orbax wants both directions registered
    item: Any = None


def stall_saves(seconds: float) -> None:
    """Makes every `CheckpointManager.save` of this process carry the stalling item."""
    save = ocp.CheckpointManager.save

    def stalled(self, step, *a, args=None, **kw):
        items = {**dict(args.items()), "test_stall": _StallingJsonSave({"seconds": seconds})}
        return save(self, step, *a, args=ocp.args.Composite(**items), **kw)

    ocp.CheckpointManager.save = stalled


if __name__ == "__main__":
    from jaxtrade import train
    from jaxtrade.watchdog import enable_stack_dumps

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    enable_stack_dumps()  # tests.cli.Cli asks a hung process for its stacks (SIGUSR1)
    stall_saves(float(sys.argv[1]))
    sys.exit(train.main(sys.argv[2:]))
