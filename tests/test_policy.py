"""`jaxtrade.load_policy`: decisions on a DataFrame of recent bars, consistent with evaluation."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import jaxtrade
from jaxtrade import networks, train
from jaxtrade.checkpoint import CheckpointError
from jaxtrade.data import SyntheticConfig, synthetic_panel
from jaxtrade.data.features import FEATURE_NAMES
from jaxtrade.envs import NAMES, Regime
from jaxtrade.envs.regimes import TABLE
from jaxtrade.evaluation import EvaluationError
from jaxtrade.networks.base import Encoder, Head, Step, Unroll
from tests.conftest import long_frame
from tests.test_train import TINY

SYMBOLS = ["SYN00", "SYN01", "SYN02", "SYN03"]


@pytest.fixture(scope="module")
def policy(trained_run):
    return jaxtrade.load_policy(trained_run[0])


def first_bars(frame, n):
    dates = sorted(frame["date"].unique())
    return frame[frame["date"] <= dates[n - 1]], dates


def check_regime_table(decision):
    """The target weights are the chosen regime's row of the regime table."""
    w = decision.weights
    assert list(w) == [*SYMBOLS, "CASH"]
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6) and min(w.values()) >= 0
    if decision.regime_index == Regime.HOLD:
        assert w == pytest.approx(decision.held, abs=1e-6)
        return
    cash, _, top = TABLE[decision.regime_index]
    k = max(-(-int(top) * len(SYMBOLS) // 100), 1)
    assert w["CASH"] == pytest.approx(cash, abs=1e-6)
    stocks = [v for s, v in w.items() if s != "CASH" and v > 0]
    assert len(stocks) == (k if cash < 1 else 0)
    assert stocks == pytest.approx([(1 - cash) / k] * len(stocks), abs=1e-6)


def test_decision_is_a_distribution_over_regimes_with_table_weights(policy, user_csv):
    bars, dates = first_bars(user_csv[1], 60)
    d = policy(bars)
    assert d.as_of == dates[59]
    assert list(d.probabilities) == list(NAMES)
    assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert d.regime == max(d.probabilities, key=d.probabilities.get) == NAMES[d.regime_index]
    check_regime_table(d)
    # The policy's own holdings after walking the history: a valid portfolio.
    assert list(d.held) == [*SYMBOLS, "CASH"]
    assert sum(d.held.values()) == pytest.approx(1.0, abs=1e-5)
    # Row order does not matter (the loader sorts); extra columns are ignored.
    shuffled = bars.sample(frac=1.0, random_state=0).assign(note="x")
    assert policy(shuffled) == d
    assert d.regime in str(d)


@pytest.mark.parametrize("n_bars", [21, 60])
def test_decision_equals_the_evaluation_walk_on_the_same_bars(n_bars, policy, user_csv,
                                                             csv_evaluation):
    """The decision after the first n bars is the action `python -m jaxtrade.evaluate` took on
    the next bar when walking the whole file (21 bars: the feature window + 1, no warm-up)."""
    bars, dates = first_bars(user_csv[1], n_bars)
    decisions = pd.read_csv(csv_evaluation[0] / "decisions.csv")
    evaluated = decisions.set_index("date").loc[f"{dates[n_bars]:%Y-%m-%d}"]
    d = policy(bars)
    assert d.regime == evaluated["regime"]
    # The holdings it starts from are those of the evaluation after the previous bar.
    if n_bars > 21:
        before = decisions.set_index("date").loc[f"{dates[n_bars - 1]:%Y-%m-%d}"]
        np.testing.assert_allclose([d.held[s] for s in [*SYMBOLS, "CASH"]],
                                   [before[f"w_{s}"] for s in [*SYMBOLS, "CASH"]], atol=1e-6)


def test_current_weights_replace_the_policys_own(policy, user_csv):
    bars, _ = first_bars(user_csv[1], 60)
    d = policy(bars, current_weights={"SYN01": 0.25, "CASH": 0.75})
    assert d.held == {"SYN00": 0.0, "SYN01": 0.25, "SYN02": 0.0, "SYN03": 0.0, "CASH": 0.75}
    check_regime_table(d)
    with pytest.raises(EvaluationError, match="sum to 1"):
        policy(bars, current_weights={"SYN01": 0.5})
    with pytest.raises(EvaluationError, match="unknown key"):
        policy(bars, current_weights={"AAPL": 1.0})


def test_too_few_bars_or_another_asset_count_is_one_line(policy, user_csv):
    bars, _ = first_bars(user_csv[1], 20)
    with pytest.raises(EvaluationError, match="20 aligned bars is too few.*at least 21"):
        policy(bars)
    three = long_frame(synthetic_panel(SyntheticConfig(n_assets=3, n_bars=40, seed=2)))
    with pytest.raises(EvaluationError, match="trained on 4 assets .* but the data has 3"):
        policy(three)


def test_load_policy_is_exported_lazily():
    code = ("import sys, jaxtrade; assert 'jax' not in sys.modules; "
            "assert callable(jaxtrade.load_policy); assert 'jax' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_window_uses_the_last_bars_of_a_whole_file_whatever_its_date_header(policy, user_csv):
    """`policy(file as read, window=60)` is the decision on the file's last 60 bars given
    directly, with the date column under another accepted name (the README's example)."""
    frame = pd.read_csv(user_csv[0]).rename(columns={"date": "Timestamp"})
    dates = sorted(frame["Timestamp"].unique())
    assert len(dates) > 60  # else the window would cut nothing
    last = frame[frame["Timestamp"] >= dates[-60]]
    d = policy(frame, window=60)
    assert d == policy(last)
    assert d.as_of == pd.Timestamp(dates[-1])
    for window in (20, 0, 60.0, True):
        with pytest.raises(EvaluationError, match=rf"^window={window!r}: expected a whole "
                                                  r"number of bars >= 21 \(the 20-bar"):
            policy(frame, window=window)
    with pytest.raises(EvaluationError, match=rf"^bars: {len(dates)} aligned bars is fewer "
                                              rf"than window=500; "):
        policy(frame, window=500)


def test_network_dims_are_the_runs_recorded_ones(policy, trained_run, tmp_path):
    """obs_dim and n_actions come from RUN_DIR/env.json (for a run older than it, the portfolio
    env on the recorded assets), and the saved parameters must fit the network built so."""
    env_record = json.loads((trained_run[0] / "env.json").read_text())
    obs_dim = 4 * len(FEATURE_NAMES) + 4 + 3  # 4 assets' features, their weights, 3 portfolio
    assert (policy.network.obs_dim, policy.network.n_actions) == (
        env_record["obs_dim"], env_record["num_actions"]) == (obs_dim, len(NAMES))
    run = shutil.copytree(trained_run[0], tmp_path / "run")

    (run / "env.json").unlink()  # as runs written before env.json
    old = jaxtrade.load_policy(run)
    assert (old.network.obs_dim, old.network.n_actions) == (obs_dim, len(NAMES))

    (run / "env.json").write_text(json.dumps({**env_record, "obs_dim": obs_dim + 1}))
    with pytest.raises(CheckpointError, match=(
            rf"/checkpoints/\d+: the saved parameters do not fit the run's gru network for obs "
            rf"{obs_dim + 1} and {len(NAMES)} actions: params/encoder/dense_0/kernel is "
            rf"\({obs_dim}, 8\) saved but \({obs_dim + 1}, 8\) built$")):
        jaxtrade.load_policy(run)
    (run / "env.json").write_text(json.dumps({**env_record, "num_actions": "12"}))
    with pytest.raises(EvaluationError, match=(
            rf"env.json: not a jaxtrade env record \(obs_dim and num_actions must be whole "
            rf"numbers > 0, got \({obs_dim}, '12'\)\)$")):
        jaxtrade.load_policy(run)
    # The observation layout (what the set encoder reads) is recorded too.
    assert env_record["obs_layout"] == {"n_assets": 4, "blocks": [len(FEATURE_NAMES), 1],
                                        "n_globals": 3, "mask_token": None}
    (run / "env.json").write_text(json.dumps({**env_record, "obs_layout": {"n_assets": 4}}))
    with pytest.raises(EvaluationError, match=r"env.json: not a jaxtrade env record \('blocks'"):
        jaxtrade.load_policy(run)
    (run / "env.json").write_text(json.dumps({**env_record, "obs_layout": [4]}))
    with pytest.raises(EvaluationError, match=r"env.json: not a jaxtrade env record \('list'"):
        jaxtrade.load_policy(run)



def test_a_run_of_another_env_is_refused(trained_run, tmp_path):
    import tests.envs.masked  # noqa: F401  (registers masked-walk)

    run = shutil.copytree(trained_run[0], tmp_path / "run")
    for path in run.glob("checkpoints/*/meta/metadata"):
        meta = json.loads(path.read_text())
        meta["config"]["env"]["name"] = "masked-walk"
        path.write_text(json.dumps(meta))
    with pytest.raises(EvaluationError, match=r"/checkpoints/\d+: trained on env 'masked-walk'; "
                       r"a policy decides the portfolio env's regimes, so it loads portfolio "
                       r"runs only$"):
        jaxtrade.load_policy(run)


class RenamedMLP(networks.MLPActorCritic):
    """The feed-forward network with its trunk and policy head under other names: a network
    whose parameters have no `encoder` or `policy_head`."""

    def setup(self) -> None:
        self.torso = Encoder(self.hidden_dim, self.dropout, dtype=self.dtype)
        self.actor = Head(self.hidden_dim // 2, self.n_actions, dtype=self.dtype)
        self.value_head = Head(self.hidden_dim // 2, 1, dtype=self.dtype)

    def __call__(self, state, obs, reset, deterministic=True) -> Step:
        trunk = self.torso(obs, deterministic)
        return Step(state, self.actor(trunk), self.value_from_trunk(trunk))

    def unroll(self, state, obs, reset, deterministic=True) -> Unroll:
        trunk = self.torso(obs, deterministic)
        return Unroll(state, self.actor(trunk), self.value_from_trunk(trunk), trunk)


@pytest.mark.slow
def test_a_network_with_other_parameter_names_loads_and_decides(monkeypatch, tmp_path, user_csv):
    def renamed(nc, obs_dim, n_actions, dtype, layout):
        return RenamedMLP(obs_dim=obs_dim, n_actions=n_actions, hidden_dim=nc.hidden_dim,
                          dropout=nc.dropout, dtype=dtype)

    monkeypatch.setitem(networks.NETWORKS, "renamed", renamed)
    monkeypatch.setattr(networks, "KINDS", (*networks.KINDS, "renamed"))
    run_dir = tmp_path / "run"
    argv = [*TINY, "--network", "renamed", "--iterations", "1", "--eval-every", "0",
            "--run-dir", str(run_dir), "-q"]
    assert train.main(argv) == 0
    policy = jaxtrade.load_policy(run_dir)
    assert sorted(policy.params) == ["actor", "torso", "value_head"]
    assert isinstance(policy.network, RenamedMLP)
    check_regime_table(policy(first_bars(user_csv[1], 30)[0]))
