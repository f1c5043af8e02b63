"""`python -m jaxtrade.evaluate` on a funding run (`jaxtrade.funding_report`): the policy and
the rule baselines day by day under fixed trading configs, report.json, equity.csv and
equity.png, the user's config flags, and the errors."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from jaxtrade import evaluate
from jaxtrade.funding_report import STRATEGIES
from tests.conftest import FUNDING_HOURS


def run_evaluate(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def user_config_report(funding_run, tmp_path_factory):
    """The tiny run evaluated on its test days under one user config: (out dir, stdout)."""
    out_dir = tmp_path_factory.mktemp("funding-eval")
    code, text = run_evaluate(["--run-dir", str(funding_run[0]), "--out", str(out_dir),
                               "--leverage", "8", "--utilisation", "0.75",
                               "--max-positions", "5", "--buffer", "0.01"])
    assert code == 0, text
    return out_dir, text


def test_user_config_report_files_and_table(user_config_report):
    out_dir, text = user_config_report
    report = json.loads((out_dir / "report.json").read_text())
    assert report["report"] == "funding"
    (label, block), = report["configs"].items()  # the user's config only
    assert block["config"] == {"leverage": 8.0, "utilisation": 0.75, "max_positions": 5,
                               "buffer": 0.01}
    assert list(block["strategies"]) == list(STRATEGIES)
    days = report["range"]["days"]
    assert days >= 3 and report["range"]["hours_per_day"] == FUNDING_HOURS
    never = block["strategies"]["never"]
    assert never["total_return"] == 0.0 and never["positions_opened"] == 0
    assert block["statistics"]["n_trials"] == 2  # the run's two validation walks
    for name in STRATEGIES:
        assert len(block["strategies"][name]["daily_returns"]) == days
    assert f"config {label}" in text and "verdict:" in text
    assert "wrote report.json, equity.csv, equity.png" in text
    assert (out_dir / "equity.png").stat().st_size > 10_000


def test_equity_csv_compounds_the_days_and_marks_liquidations(user_config_report):
    """The hourly curve of each strategy ends each day at the compounded daily returns of
    the report, and its liquidation column sums to the report's count."""
    out_dir, _ = user_config_report
    report = json.loads((out_dir / "report.json").read_text())
    (label, block), = report["configs"].items()
    frame = pd.read_csv(out_dir / "equity.csv")
    assert set(frame["config"]) == {label}
    days = report["range"]["days"]
    assert len(frame) == days * FUNDING_HOURS + 1
    times = pd.to_datetime(frame["time"])
    assert times.is_monotonic_increasing
    for name in STRATEGIES:
        m = block["strategies"][name]
        day_ends = frame[name].to_numpy()[FUNDING_HOURS::FUNDING_HOURS]
        np.testing.assert_allclose(day_ends, np.cumprod(1.0 + np.asarray(m["daily_returns"])),
                                   rtol=1e-6)
        assert frame[f"{name}_liquidations"].sum() == m["liquidations"]
        assert frame[name].iloc[0] == 1.0


def test_reference_configs_and_user_data(funding_run, tmp_path):
    """Without config flags: the three reference configs; --data reports a user's table
    whole (here the example file: 72 hours, 6 whole half-days)."""
    code, text = run_evaluate(["--run-dir", str(funding_run[0]), "--out", str(tmp_path),
                               "--data", "data/funding_example.csv"])
    assert code == 0, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["configs"]) == ["1x / 40% / 2 positions", "3x / 60% / 3 positions",
                                       "8x / 75% / 5 positions"]
    assert report["range"]["days"] == 72 // FUNDING_HOURS - 1  # the last hour marks only
    assert report["data"]["source"].startswith("data/funding_example.csv")
    assert text.count("verdict:") == 3


@pytest.mark.parametrize("argv, message", [
    (["--leverage", "3"], "needs --leverage, --utilisation and --max-positions together"),
    (["--leverage", "3", "--utilisation", "0.6", "--max-positions", "9"], "got 9"),
    (["--start", "2024-04-10"], "whole days of --range"),
    (["--range", "all"], "one range"),
])
def test_bad_funding_flags_are_one_line(funding_run, argv, message, capsys):
    code = evaluate.main(["--run-dir", str(funding_run[0]), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_config_flags_on_a_portfolio_run_are_refused(trained_run, capsys):
    code = evaluate.main(["--run-dir", str(trained_run[0]), "--leverage", "3",
                          "--utilisation", "0.6", "--max-positions", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "funding run's trading config" in err, err
