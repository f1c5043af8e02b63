"""Shared helpers for benchmarks: device naming and result files (host-only)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def device_info() -> dict:
    """What the figures were measured on."""
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "n_devices": len(devices),
        "host_cpus": os.cpu_count(),
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def device_slug(info: dict) -> str:
    """A file-name-safe device name, e.g. 'cpu-2cores' or 'nvidia-h100-80gb-hbm3-x8'."""
    if info["platform"] == "cpu":
        return f"cpu-{info['host_cpus']}cores"
    kind = re.sub(r"[^a-z0-9]+", "-", info["device_kind"].lower()).strip("-")
    return f"{kind}-x{info['n_devices']}"


def result_path(name: str, info: dict, out_dir: Path | None = None) -> Path:
    """Where `save` writes: {out_dir or RESULTS}/{name}_{device}_{date}.json."""
    out_dir = Path(out_dir) if out_dir else RESULTS
    return out_dir / f"{name}_{device_slug(info)}_{info['date']}.json"


def save(
    name: str,
    info: dict,
    rows: list[dict],
    out_dir: Path | None = None,
    settings: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Writes {name}_{device}_{date}.json (device, settings shared by all rows, rows, and
    `extra`'s keys) and returns its path."""
    path = result_path(name, info, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "device": info, "settings": settings or {}, "results": rows}
    clash = set(record) & set(extra or {})
    if clash:
        raise ValueError(f"extra fields {sorted(clash)} would overwrite the record's own")
    record.update(extra or {})
    path.write_text(json.dumps(record, indent=2))
    return path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format spec)."""
    cells = [[format(r[k], f) for k, _, f in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
