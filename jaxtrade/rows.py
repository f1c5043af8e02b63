"""metrics.jsonl rows (host-only): which columns are training's and which a validation walk's,
and which values are numbers; shared by the plots and the TensorBoard events."""

from __future__ import annotations

from typing import Any

ENV_FILE = "env.json"  # RUN_DIR/env.json: the env's name, action names, obs and action sizes
# Validation columns are val_<metric>; runs written before the rename have eval_<metric>.
VALIDATION_PREFIXES = ("val_", "eval_")


def split_row(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A metrics.jsonl row as (training columns, validation metrics without their prefix).

    A metric logged both as val_<m> and eval_<m> takes the val_ value.
    """
    training, validation = {}, {}
    for key, value in row.items():
        prefix = next((p for p in VALIDATION_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            training[key] = value
            continue
        metric = key[len(prefix):]
        if metric not in validation or prefix == VALIDATION_PREFIXES[0]:
            validation[metric] = value
    return training, validation


def number(value: Any) -> float | None:
    """`value` as a float if it is a JSON number (NaN and infinities included), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
