"""Regime specialists: the market-regime detector (`jaxtrade.regime_detector`) reads past
bars only and fits its thresholds on the training range only; the choice per regime is the
argmax of the validation Sharpe over the regime's steps, the overall champion where a regime
has too few; a tiny league round (test_league's flags) with --regime-specialists records it;
the routing policy (`load_policy("league:DIR")`) asks the specialist of the regime of the
bars it is given; refusals are one line."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import jaxtrade
from jaxtrade import archive, league, specialists
from jaxtrade import regime_detector as rd
from jaxtrade.evaluation import EvaluationError
from tests.test_league import LEAGUE, run_cli

BARS_PER_YEAR = 252.0


def random_prices(n=300, a=4, seed=0):
    rng = np.random.default_rng(seed)
    vol = np.where(np.arange(n) % 100 < 50, 0.01, 0.03)[:, None]  # calm and wild stretches
    return 100 * np.exp(np.cumsum(rng.normal(0.0005, 1, (n, a)) * vol, axis=0))


# ------------------------------------------------------------------------- detector
def test_trailing_statistics_are_the_index_return_and_volatility_of_the_last_bars():
    p = random_prices(60)
    trend, vol = rd.trailing(p, 10)
    r = np.mean(p[1:].astype(np.float32).astype(np.float64)
                / p[:-1].astype(np.float32).astype(np.float64), axis=1) - 1
    t = 37  # returns into bars 28 .. 37
    assert np.isclose(trend[t], np.prod(1 + r[27:37]) - 1)
    assert np.isclose(vol[t], np.std(r[27:37]))
    assert np.isnan(trend[:10]).all() and not np.isnan(trend[10:]).any()


@pytest.mark.parametrize("kind", list(rd.KINDS))
def test_labels_read_only_past_bars(kind):
    """Changing the bars after t leaves every label up to t as it was; changing a bar
    before t (the control) changes labels after it."""
    p = random_prices()
    det = rd.fit(p, 200, kind, 20)
    labels = det.labels(p)
    t = 150
    future = p.copy()
    future[t + 1:] *= np.linspace(0.2, 5.0, len(p) - t - 1)[:, None]  # wild future bars
    assert np.array_equal(det.labels(future)[:t + 1], labels[:t + 1])
    assert not np.array_equal(det.labels(future)[t + 1:], labels[t + 1:])
    past = p.copy()
    past[t - 5:] *= 0.7  # a crash 5 bars before t: every later price lower
    changed = det.labels(past)
    assert np.array_equal(changed[:t - 5], labels[:t - 5])
    assert not np.array_equal(changed[t - 5:t + 1], labels[t - 5:t + 1])
    assert (labels[:20] == -1).all() and (labels[20:] >= 0).all()


def test_thresholds_come_from_the_training_range_only():
    p = random_prices()
    det = rd.fit(p, 200)
    other = p.copy()
    other[200:] = other[200:] * 3 + 50  # anything after the training range
    assert rd.fit(other, 200) == det
    earlier = p.copy()
    earlier[100:200] *= np.exp(np.linspace(0, 1, 100))[:, None]  # a training bar changes
    assert rd.fit(earlier, 200) != det
    # four: the quartiles of volatility, the median trend between them
    trend, vol = rd.trailing(p[:200], 20)
    trend, vol = trend[20:], vol[20:]
    assert np.isclose(det.vol_low, np.quantile(vol, 0.25))
    assert np.isclose(det.vol_high, np.quantile(vol, 0.75))
    assert np.isclose(det.trend, np.median(trend[(vol >= det.vol_low) & (vol <= det.vol_high)]))
    shares = np.bincount(det.labels(p)[20:200], minlength=4) / 180
    assert np.allclose(shares, 0.25, atol=0.02)  # each label a quarter of the training bars
    assert rd.RegimeDetector.from_dict(json.loads(json.dumps(det.to_dict()))) == det
    with pytest.raises(rd.RegimeError, match="needs at least 2"):
        rd.fit(p, 21, lookback=20)


def test_a_step_takes_the_label_of_the_bar_its_decision_observes():
    p = random_prices()
    det = rd.fit(p, 200)
    steps = det.step_labels(p, 200, 60)
    assert np.array_equal(steps, det.labels(p)[199:259])
    cut = p.copy()
    cut[259:] = np.nan  # the last step trades at bar 259: nothing from it on is read
    assert np.array_equal(det.step_labels(cut, 200, 60), steps)
    assert det.label(p[:230]) == det.names[steps[30]]  # deployment: the last bar given


# --------------------------------------------------------------------------- choice
def test_each_regime_takes_the_best_sharpe_over_its_steps_or_the_champion():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, -1])  # bull x4, bear x4, high_vol x1
    a = np.array([0.01, 0.02, 0.01, 0.02, -0.01, -0.02, -0.01, -0.02, 0.05, 0.9])
    b = np.array([-0.01, 0.0, -0.01, 0.0, 0.01, 0.03, 0.01, 0.02, -0.05, -0.9])
    out = specialists.choose({"m1": a, "m2": b}, labels, rd.KINDS["four"], 4, BARS_PER_YEAR,
                             "m1")
    assert out["bull"].model == "m1" and not out["bull"].fallback and out["bull"].steps == 4
    assert np.isclose(out["bull"].sharpe, specialists.sharpe(a[:4], BARS_PER_YEAR))
    assert out["bear"].model == "m2" and out["bear"].scores["m1"] < out["bear"].sharpe
    # one high_vol step (< 4): the champion, although m2 would not be chosen anyway
    assert out["high_vol"].fallback and out["high_vol"].model == "m1"
    assert out["high_vol"].steps == 1
    assert out["low_vol"].fallback and out["low_vol"].steps == 0 and out["low_vol"].sharpe is None
    # the champion falls back even where another candidate is better
    out = specialists.choose({"m1": a, "m2": b}, labels, rd.KINDS["four"], 5, BARS_PER_YEAR,
                             "m1")
    assert out["bear"].model == "m1" and out["bear"].fallback
    np.testing.assert_allclose(specialists.sharpe(np.array([0.01, 0.03]), 4.0),
                               0.02 / 0.01 * 2.0)


# ----------------------------------------------------------------------- the league
@pytest.fixture(scope="module")
def round_(tmp_path_factory):
    """A first tiny round (test_league's flags: 2 explorers) with --regime-specialists:
    (league dir, archive, stdout, the market the candidates were walked on)."""
    base = tmp_path_factory.mktemp("specialists")
    walked = []
    original = specialists.validation_returns

    def spy(market, *a, **kw):
        walked.append(market)
        return original(market, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(specialists, "validation_returns", spy)
        code, out, err = run_cli([*LEAGUE, "--regime-specialists", "--regime-min-steps", 5,
                                  "--league-dir", base / "league", "--archive", base / "archive"])
    assert code == 0, err
    return base / "league", archive.Archive(base / "archive"), out, walked[0]


def test_a_round_chooses_a_specialist_per_regime_on_validation(round_):
    league_dir, a, out, market = round_
    spec = league.read_records(league_dir)[-1]["specialists"]
    entries = {e["id"]: e for e in a.entries()}
    ranked = sorted(entries, key=lambda i: -entries[i]["val_score"])
    assert spec["candidates"] == ranked and spec["champion"] == ranked[0]
    for model_id, s in spec["overall_sharpe"].items():  # the league's own validation walk
        assert np.isclose(s, entries[model_id]["validation"][-1]["sharpe"], atol=1e-4)
    compared = 0
    for c in spec["regimes"].values():
        assert c["fallback"] == (c["steps"] < 5)
        if not c["fallback"]:
            compared += 1
            assert c["sharpe"] == max(c["scores"].values()) == c["scores"][c["model"]]
        else:
            assert c["model"] == spec["champion"]
    assert sum(c["steps"] for c in spec["regimes"].values()) == spec["validation"]["steps"]
    assert spec["trials"] == len(spec["candidates"]) * compared
    # validation chooses: the market walked holds no test bar
    assert market.test_start == market.n_bars and market.withheld_test is not None
    assert spec["validation"]["last"] == market.n_bars - 1
    d = spec["detector"]
    assert d["kind"] == "four" and d["lookback"] == 20 and d["fitted_on"] == [20, market.val_start]
    assert "regime specialists: four regimes over a 20-bar lookback" in out
    assert f"{len(spec['candidates'])} candidates x {compared} regimes = " in out
    assert f'load the specialists: jaxtrade.load_policy("league:{league_dir}")' in out


def trending_bars(drift: float, n: int = 60) -> pd.DataFrame:
    """TINY's 4 symbols rising (drift > 0) or falling steadily, with a little wiggle."""
    dates = pd.bdate_range("2012-01-02", periods=n)
    t = np.arange(n)
    rows = []
    for j in range(4):
        close = 100 * np.exp(drift * t + 0.003 * np.sin(t * (j + 1)))
        rows.append(pd.DataFrame({"date": dates, "symbol": f"SYN{j:02d}", "open": close,
                                  "high": close, "low": close, "close": close,
                                  "volume": 1e6}))
    return pd.concat(rows, ignore_index=True)


def test_the_router_asks_the_specialist_of_the_bars_regime(round_):
    league_dir, _, _, _ = round_
    loaded = jaxtrade.load_policy(f"league:{league_dir}")
    assert isinstance(loaded, specialists.SpecialistPolicy)
    spec = league.read_records(league_dir)[-1]["specialists"]
    assert loaded.routes == {n: c["model"] for n, c in spec["regimes"].items()}
    first, second = spec["candidates"][:2]
    assert first != second
    # bull / bear by the sign of the 5-bar index return, to a model each
    det = rd.RegimeDetector("trend", 5, 0.0, None, None)
    router = specialists.SpecialistPolicy(det, {"bull": first, "bear": second},
                                          loaded.policies | {second: archive.load_policy(
                                              second, spec["archive"])}, first)
    for drift, regime, model in ((0.01, "bull", first), (-0.01, "bear", second)):
        bars = trending_bars(drift)
        d = router(bars, window=40)
        assert (d.market_regime, d.model) == (regime, model)
        direct = router.policies[model](bars, window=40)
        assert (d.regime, d.weights, d.as_of) == (direct.regime, direct.weights, direct.as_of)
        assert str(d).startswith(f"[{regime}: {model}] after ")
    # only the bars given count: the last 40 of bull then bear bars are bear
    mixed = pd.concat([trending_bars(0.01, 60), trending_bars(-0.01, 60).assign(
        date=lambda f: f["date"] + pd.Timedelta(days=120))])
    assert router.regime(mixed, window=40) == "bear"


def test_refusals_are_one_line(tmp_path, round_):
    code, out, err = run_cli([*LEAGUE, "--regime-lookback", 10, "--league-dir", tmp_path / "l",
                              "--archive", tmp_path / "a"])
    assert code == 2 and out == ""
    assert err == "error: --regime-lookback needs --regime-specialists\n"
    code, _, err = run_cli([*LEAGUE, "--regime-specialists", "--regime-min-steps", 0,
                            "--league-dir", tmp_path / "l", "--archive", tmp_path / "a"])
    assert code == 2 and err == "error: --regime-min-steps must be at least 1, got 0\n"
    for market, env, message in (
            ("worlds", "portfolio", "--regime-specialists: procedural worlds have no time axis"),
            ("fixed", "funding", "--regime-specialists: the funding env is not supported")):
        cfg = SimpleNamespace(data=SimpleNamespace(market=market), env=SimpleNamespace(name=env))
        with pytest.raises(league.UsageError, match=message) as e:
            league.check_specialists(cfg, SimpleNamespace(worlds=None))
        assert "\n" not in str(e.value)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / league.RECORDS_FILE).write_text(json.dumps({"round": 1}) + "\n")
    with pytest.raises(EvaluationError, match="no round chose regime specialists"):
        jaxtrade.load_policy(f"league:{tmp_path / 'plain'}")
    with pytest.raises(EvaluationError, match="not a league directory"):
        jaxtrade.load_policy(f"league:{tmp_path / 'nothing'}")
    loaded = jaxtrade.load_policy(f"league:{round_[0]}")
    router = specialists.SpecialistPolicy(rd.RegimeDetector("trend", 30, 0.0, None, None),
                                          {"bull": loaded.champion, "bear": loaded.champion},
                                          loaded.policies, loaded.champion)
    with pytest.raises(EvaluationError, match=r"needs the last 31 bars \(a 30-bar lookback "
                                              r"\+ 1\), got 25$"):
        router(trending_bars(0.01, 25))
