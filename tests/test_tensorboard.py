"""TensorBoard event files: rows written, read back with a TFRecord reader and
tensorboardX's own protobuf classes, tags, steps and values checked."""

import struct

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from jaxtrade.envs import NAMES
from jaxtrade.tensorboard import TB_DIR, TensorBoardLog, scalars

FREQ = [0.5, 0.25] + [0.025] * 10


def read_events(run_dir) -> list[Event]:
    """Every event of the one event file in `run_dir/tb`, CRCs checked (TFRecord: u64 length,
    u32 masked CRC of the length, data, u32 masked CRC of the data; little endian)."""
    (path,) = (run_dir / TB_DIR).iterdir()
    assert path.name.startswith("events.out.tfevents.")
    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack_from("<I", data, at + 8)
        body = data[at + 12:at + 12 + length]
        (body_crc,) = struct.unpack_from("<I", data, at + 12 + length)
        assert (header_crc, body_crc) == (masked_crc32c(header), masked_crc32c(body))
        events.append(Event.FromString(body))
        at += 12 + length + 4
    return events


def logged(events) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] in file order."""
    out = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_scalars_names_training_actions_and_validation_tags():
    row = {"iteration": 3, "timesteps": 768, "policy_loss": -0.5, "value_loss": float("nan"),
           "entropy": float("inf"), "done": True, "status": "ok", "action_freq": FREQ,
           "val_score": 2.0, "eval_score": 9.0, "eval_sharpe": 1.5, "val_action_freq": FREQ,
           "val_note": [1, 2]}
    expected = {"iteration": 3.0, "timesteps": 768.0, "policy_loss": -0.5, "validation/score": 2.0,
                "validation/sharpe": 1.5}
    for name, share in zip(NAMES, FREQ, strict=True):
        expected[f"actions/{name}"] = share
        expected[f"validation/actions/{name}"] = share
    assert scalars(row) == expected


def test_rows_read_back_at_their_timesteps(tmp_path):
    rows = [
        {"iteration": 1, "timesteps": 256, "policy_loss": -0.25,
         "episode_return_mean": float("nan"), "action_freq": FREQ},
        {"iteration": 2, "timesteps": 512, "policy_loss": -0.125, "episode_return_mean": 1.5,
         "action_freq": FREQ[::-1], "eval_score": -3.0, "eval_total_return": 0.0625},
        {"iteration": 3, "timesteps": 768, "policy_loss": 0.5, "episode_return_mean": 2.5,
         "action_freq": FREQ, "val_score": 4.0},
    ]
    with TensorBoardLog(tmp_path) as tb:
        for row in rows:
            tb.write(row)
    got = logged(read_events(tmp_path))
    assert got["policy_loss"] == [(256, -0.25), (512, -0.125), (768, 0.5)]
    assert got["episode_return_mean"] == [(512, 1.5), (768, 2.5)]  # NaN left out
    assert got["iteration"] == [(256, 1.0), (512, 2.0), (768, 3.0)]
    assert got["validation/score"] == [(512, -3.0), (768, 4.0)]
    assert got["validation/total_return"] == [(512, 0.0625)]
    # float32 in the file: the shares come back to float32 precision.
    assert [s for s, _ in got["actions/HOLD"]] == [256, 512, 768]
    np.testing.assert_allclose([v for _, v in got["actions/HOLD"]], [0.5, 0.025, 0.5], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in got["actions/FULL_CASH"]], [0.25, 0.025, 0.25],
                               rtol=1e-6)
    assert {t for t in got if t.startswith("actions/")} == {f"actions/{n}" for n in NAMES}


def test_purge_step_marks_a_restart(tmp_path):
    with TensorBoardLog(tmp_path, purge_step=512) as tb:
        tb.write({"timesteps": 768, "policy_loss": 1.0})
    events = read_events(tmp_path)
    starts = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == SessionLog.START]
    assert starts == [512]
    assert logged(events) == {"timesteps": [(768, 768.0)], "policy_loss": [(768, 1.0)]}


def test_a_row_without_timesteps_is_an_error(tmp_path):
    with TensorBoardLog(tmp_path) as tb, pytest.raises(KeyError, match="timesteps"):
        tb.write({"policy_loss": 1.0})
