"""TensorBoard scalars of the metrics.jsonl rows, as event files under RUN_DIR/tb/ (host-only).

Written with tensorboardX (numpy and protobuf only; no TensorFlow, no PyTorch). View with
`tensorboard --logdir RUN_DIR/tb`, or a parent directory to compare runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter

from jaxtrade.envs import NAMES
from jaxtrade.rows import number, split_row

TB_DIR = "tb"
VALIDATION_TAG = "validation/"
ACTIONS_TAG = "actions/"


def scalars(row: dict[str, Any], action_names=NAMES) -> dict[str, float]:
    """TensorBoard tag -> value for every finite number of a metrics.jsonl row.

    Training columns keep their key (`policy_loss`); the action shares become
    `actions/<NAME>` (`action_names`: the env's; the portfolio's regimes by default);
    validation columns (val_<m>, or eval_<m> in older runs) become
    `validation/<m>` and `validation/actions/<REGIME>`. Other lists, strings, booleans,
    NaN and infinities are left out.
    """
    training, validation = split_row(row)
    out = {}
    for prefix, columns in (("", training), (VALIDATION_TAG, validation)):
        for key, value in columns.items():
            if key == "action_freq" and isinstance(value, list):
                out |= {f"{prefix}{ACTIONS_TAG}{name}": v
                        for name, v in zip(action_names, map(number, value), strict=False)
                        if v is not None and math.isfinite(v)}
            elif (v := number(value)) is not None and math.isfinite(v):
                out[prefix + key] = v
    return out


class TensorBoardLog:
    """Appends metrics.jsonl rows to a new event file in `run_dir/tb/`, at step = timesteps.

    Args:
        run_dir: the training run directory.
        purge_step: on resume, the timesteps of the checkpoint resumed from: TensorBoard then
            drops the events a previous process logged at or after it.
        flush_secs: at most this long between a `write` and its data reaching the file.
        action_names: labels of the action_freq shares (the env's `action_names`).
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None,
                 flush_secs: int = 30, action_names=NAMES):
        self.action_names = tuple(action_names)
        self.writer = SummaryWriter(logdir=str(Path(run_dir) / TB_DIR), purge_step=purge_step,
                                    flush_secs=flush_secs)

    def write(self, row: dict[str, Any]) -> None:
        """Logs `scalars(row)` at step `row['timesteps']`."""
        step = int(row["timesteps"])
        for tag, value in scalars(row, self.action_names).items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
