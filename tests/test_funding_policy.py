"""`jaxtrade.load_policy` on a funding run: the hour's action from today's table, your positions,
account and config, equal to the env's greedy walk of the day."""

import dataclasses
import re
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import jaxtrade
from jaxtrade import checkpoint as ckpt
from jaxtrade.data.funding import load_funding
from jaxtrade.data.panel import DataError
from jaxtrade.envs.funding import N_OPEN, FundingEnv, FundingMarket
from jaxtrade.evaluation import EvaluationError, make_policy_walk, walk_key
from jaxtrade.funding_policy import (
    ACTION_NAMES,
    Account,
    FundingDecision,
    FundingPolicy,
    TradingConfig,
)
from jaxtrade.policy import Policy
from jaxtrade.trainer import build_network
from tests.conftest import FUNDING_HOURS

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "funding_example.csv"
CONFIG = TradingConfig(leverage=3.0, utilisation=0.6, max_positions=3, buffer=0.01)
SCALE = 2500.0  # the user's money units: the day started with 2500
HOURS = FUNDING_HOURS  # the shared tiny run's day (conftest `funding_run`)


@pytest.fixture(scope="module")
def policy(funding_run):
    return jaxtrade.load_policy(funding_run[0])


@pytest.fixture(scope="module")
def table():
    return pd.read_csv(EXAMPLE)


def hours_of(table, n):
    """The table's first n hours (the example's first day starts at its first hour)."""
    times = sorted(table["entry_time"].unique())
    return table[table["entry_time"].isin(times[:n])]


@pytest.fixture(scope="module")
def env_walk(funding_run):
    """The env's greedy walk of the first day under CONFIG, as evaluation walks a day (the
    run's fees and rules, the network and checkpoint `funding_report` uses): (panel,
    actions [HOURS], masks [HOURS, 36], log_probs [HOURS], states: the env state at each hour)."""
    source = ckpt.select(funding_run[0], "best")
    cfg = source.config
    panel = load_funding(EXAMPLE)
    env = FundingEnv(FundingMarket(panel, panel.n_hours, panel.n_hours))
    fixed = {f"{name}_{end}": getattr(CONFIG, key) for name, key in
             (("leverage", "leverage"), ("utilisation", "utilisation"),
              ("positions", "max_positions"), ("buffer", "buffer")) for end in ("min", "max")}
    params = env.make_params("train", start=0, **{**cfg.env.params_kwargs(), **fixed})
    walk = make_policy_walk(build_network(cfg, env), env, HOURS)
    _, traj = jax.jit(walk)(ckpt.read_params(source), params, walk_key(cfg.run.seed))
    actions = np.asarray(traj.action[:, 0])
    # The states the walk went through: the same actions stepped again (the env is
    # deterministic; its keys only draw the reset's config, fixed here).
    _, state = env.reset(jax.random.key(0), params)
    step = jax.jit(env.step_env)
    states = [state]
    for a in actions:
        states.append(step(jax.random.key(0), states[-1], a, params)[1])
    return (panel, actions, np.asarray(traj.mask[:, 0]), np.asarray(traj.log_prob[:, 0]),
            jax.device_get(states))


def user_view(panel, state):
    """An env state as a user's positions and account, in units of SCALE."""
    s = state.slots
    slots = np.flatnonzero(s.open)
    positions = [None if not s.open[p] else {
        "symbol": panel.symbols[s.symbol[p]], "long_exchange": panel.exchanges[s.long_ex[p]],
        "short_exchange": panel.exchanges[s.short_ex[p]], "size": float(s.size[p]) * SCALE,
        "entry_long_price": float(s.entry_long[p]), "entry_short_price": float(s.entry_short[p]),
        "margin_long": float(s.margin_long[p]) * SCALE,
        "margin_short": float(s.margin_short[p]) * SCALE, "leverage": float(s.leverage[p]),
        "funding": float(s.funding[p]) * SCALE, "hours_held": int(state.step - s.opened[p]),
        "alive_long": bool(s.alive_long[p]), "alive_short": bool(s.alive_short[p]),
    } for p in range(slots.max() + 1 if slots.size else 0)]  # None: an empty slot
    account = Account(equity=float(state.equity) * SCALE, cash=float(state.cash) * SCALE,
                      day_start_equity=SCALE, liquidations=int(state.liquidations))
    return positions, account


def test_a_funding_run_loads_a_funding_policy_and_a_portfolio_run_the_portfolio_one(
        policy, trained_run):
    assert isinstance(policy, FundingPolicy) and policy.episode_length == HOURS
    assert isinstance(jaxtrade.load_policy(trained_run[0]), Policy)


@pytest.mark.parametrize("hour", [0, 9])
def test_the_decision_is_the_env_walks_action_at_that_hour(hour, policy, table, env_walk):
    """Given the day's hours up to `hour` and the walk's own positions and account there
    (in the user's units), the decision is the walk's action, mask and probability."""
    panel, actions, masks, log_probs, states = env_walk
    state = jax.tree.map(lambda x: x[hour], jax.tree.map(lambda *x: np.stack(x), *states))
    positions, account = user_view(panel, state)
    assert len(positions) == (0 if hour == 0 else 3)  # the walk holds CONFIG's max by hour 9
    d = policy(hours_of(table, hour + 1), positions, account=account, config=CONFIG)
    assert isinstance(d, FundingDecision)
    assert d.as_of == pd.Timestamp("2024-01-01") + pd.Timedelta(hours=hour)
    assert d.action == actions[hour] and d.name == ACTION_NAMES[d.action]
    assert list(d.mask.values()) == list(masks[hour])
    assert np.log(d.probabilities[d.name]) == pytest.approx(log_probs[hour], abs=1e-5)
    assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(p == 0 for a, p in d.probabilities.items() if not d.mask[a])
    assert d.probabilities[d.name] == max(d.probabilities.values())
    if d.opportunity is not None:  # an open: its pair is the hour's rank k, amounts in SCALE
        k, j = divmod(d.action - 1, 3)
        assert d.opportunity == d.opportunities[k]
        budget = CONFIG.utilisation * account.equity / CONFIG.max_positions
        assert d.margin == pytest.approx(0.5 * d.size_fraction * budget)
        assert d.notional == pytest.approx(d.margin * CONFIG.leverage)
        assert d.opportunity.symbol in d.description
    if d.slot is not None:
        assert d.position == positions[d.slot] and d.position["symbol"] in d.description


def test_masked_actions_have_probability_0_and_are_never_chosen(policy, table, env_walk):
    panel, *_, states = env_walk
    state = jax.tree.map(lambda x: x[9], jax.tree.map(lambda *x: np.stack(x), *states))
    positions, account = user_view(panel, state)
    day = hours_of(table, 10)
    one = dataclasses.replace(CONFIG, max_positions=1)
    d = policy(day, positions[:1], account=account, config=one)
    opens = ACTION_NAMES[1:N_OPEN + 1]
    assert not any(d.mask[a] for a in opens)  # max positions 1, one open: nothing to open
    assert d.mask["hold"] and d.mask["close0"] and not d.mask["close1"]
    assert all(d.probabilities[a] == 0 for a in (*opens, "close1", "close2"))
    assert d.name in ("hold", "close0")
    # Flat but no free cash: no open fits; only hold is valid.
    broke = Account(equity=account.equity, cash=0.0, day_start_equity=SCALE)
    d = policy(day, [], account=broke, config=CONFIG)
    assert [a for a, ok in d.mask.items() if ok] == ["hold"]
    assert d.name == "hold" and d.probabilities["hold"] == pytest.approx(1.0)
    assert d.description == "hold"


def test_your_positions_and_account_are_the_decisions_inputs_in_your_units(policy, table,
                                                                         env_walk):
    panel, *_, states = env_walk
    state = jax.tree.map(lambda x: x[9], jax.tree.map(lambda *x: np.stack(x), *states))
    positions, account = user_view(panel, state)
    day = hours_of(table, 10)
    held = policy(day, positions, account=account, config=CONFIG)
    flat = policy(day, [], account=Account(equity=account.equity, cash=account.equity,
                                           day_start_equity=SCALE), config=CONFIG)
    assert held.probabilities != flat.probabilities  # the observation changed
    assert held.mask["close2"] and not flat.mask["close2"]

    # Only ratios to the day's starting equity reach the model: the same book in other
    # units is the same decision (within float32 rounding).
    def scaled(pos, c):
        money = ("size", "margin_long", "margin_short", "funding")
        return None if pos is None else {k: v * c if k in money else v for k, v in pos.items()}

    small = policy(day, [scaled(p, 1 / SCALE) for p in positions],
                   account=Account(account.equity / SCALE, account.cash / SCALE, 1.0),
                   config=CONFIG)
    assert small.action == held.action
    assert list(small.probabilities.values()) == pytest.approx(
        list(held.probabilities.values()), abs=1e-5)
    # A path reads as its DataFrame; every call with 10 hours ran one compiled program.
    assert policy(day.assign(note="x"), positions, account=account, config=CONFIG) == held
    assert policy._programs[9]._cache_size() == 1


def test_a_path_reads_as_the_dataframe(policy, table, tmp_path):
    path = tmp_path / "today.csv"
    hours_of(table, 1).to_csv(path, index=False)
    account = Account(equity=1000.0, cash=1000.0)
    assert (policy(str(path), account=account, config=CONFIG)
            == policy(hours_of(table, 1), account=account, config=CONFIG))


GOOD = {"symbol": "SYN01", "long_exchange": "binance", "short_exchange": "bybit", "size": 1.0,
        "entry_long_price": 837.0, "entry_short_price": 838.0, "margin_long": 100.0,
        "margin_short": 100.0, "leverage": 3.0}
BAD = {
    "leverage above the trained range": (
        dict(config=dataclasses.replace(CONFIG, leverage=12.0)),
        r"config\.leverage=12\.0: expected a number in \[1, 10\], the range this run trained "
        r"on \(\[env\.funding\] leverage_min \.\. leverage_max\)"),
    "max positions 0": (dict(config=dataclasses.replace(CONFIG, max_positions=0)),
                        r"config\.max_positions=0: expected a whole number in \[1, 5\]"),
    "max positions not whole": (dict(config=dataclasses.replace(CONFIG, max_positions=2.5)),
                                r"config\.max_positions=2\.5: expected a whole number"),
    "utilisation as percent": (dict(config=dataclasses.replace(CONFIG, utilisation=60)),
                               r"config\.utilisation=60: expected a number in \[0\.3, 0\.8\]"),
    "config dict with a typo": (dict(config={"leverage": 3, "utilization": 0.5}),
                                r"config: unknown key\(s\) utilization; expected leverage, "
                                r"utilisation, max_positions, buffer"),
    "negative equity": (dict(account=Account(-5.0, 0.0)),
                        r"account\.equity=-5\.0: expected a finite number > 0"),
    "account missing cash": (dict(account={"equity": 10.0}),
                             r"account: missing cash; expected equity, cash, "),
    "positions not a list": (dict(positions=GOOD),
                             r"positions: expected a list of dicts .*got dict"),
    "position missing a key": (dict(positions=[{k: v for k, v in GOOD.items() if k != "size"}]),
                               r"positions\[0\]: missing size; expected symbol, "),
    "position with an unknown key": (dict(positions=[{**GOOD, "side": "long"}]),
                                     r"positions\[0\]: unknown key\(s\) side;"),
    "unknown symbol": (dict(positions=[{**GOOD, "symbol": "BTC"}]),
                       r"positions\[0\]\.symbol='BTC' is not in the table \(symbols: SYN00, "),
    "same exchange twice": (dict(positions=[{**GOOD, "short_exchange": "binance"}]),
                            r"positions\[0\]: long_exchange and short_exchange are both "
                            r"'binance'"),
    "negative size": (dict(positions=[GOOD, {**GOOD, "size": -1.0}]),
                      r"positions\[1\]\.size=-1\.0: expected a finite number > 0"),
    "both legs liquidated": (dict(positions=[{**GOOD, "alive_long": False,
                                              "alive_short": False}]),
                             r"positions\[0\]: neither leg is alive"),
    "six positions": (dict(positions=[GOOD] * 6), r"positions: 6 given; the env holds at most 5"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_one_line_errors(case, policy, table):
    change, pattern = BAD[case]
    kwargs = {"positions": [], "account": Account(1000.0, 1000.0), "config": CONFIG, **change}
    with pytest.raises(EvaluationError, match=pattern) as info:
        policy(hours_of(table, 3), kwargs.pop("positions"), **kwargs)
    assert "\n" not in str(info.value)


def test_a_table_longer_than_a_day_or_malformed_is_refused(policy, table):
    kwargs = {"account": Account(1000.0, 1000.0), "config": CONFIG}
    with pytest.raises(EvaluationError, match=re.escape(
            f"table: {HOURS + 1} hours (2024-01-01 00:00 .. 2024-01-01 {HOURS:02d}:00) is more "
            f"than a day of {HOURS}; give today's hours only, from the day's first hour to now")):
        policy(hours_of(table, HOURS + 1), **kwargs)
    with pytest.raises(DataError, match=r"^DataFrame: missing column\(s\) fund_apr"):
        policy(hours_of(table, 2).drop(columns="fund_apr"), **kwargs)
    with pytest.raises(DataError, match=r"nowhere\.csv: no such file"):
        policy("nowhere.csv", **kwargs)
