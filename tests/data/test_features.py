"""Features: independent numpy values, causality, training-only normalisation."""

import dataclasses

import numpy as np
import pytest

from jaxtrade.data import FEATURE_NAMES, WINDOW
from jaxtrade.data import features as feats


@pytest.fixture(scope="module")
def computed(small_panel):
    return feats.compute(small_panel)


def test_values_match_direct_numpy(small_panel, computed):
    f, scores = computed
    p, c, v = small_panel.adj_close, small_panel.close, small_panel.volume
    t, i = 57, 3
    col = {name: k for k, name in enumerate(FEATURE_NAMES)}
    r = np.diff(np.log(p[:, i]))  # r[k] is the return into bar k + 1
    last20 = r[t - WINDOW : t]
    lv = np.log1p(v[t - 19 : t + 1, i])
    expected = {
        "ret_1": np.log(p[t, i] / p[t - 1, i]),
        "ret_5": np.log(p[t, i] / p[t - 5, i]),
        "ret_20": np.log(p[t, i] / p[t - 20, i]),
        "mom_20": p[t, i] / p[t - 19 : t + 1, i].mean() - 1,
        "vol_20": last20.std(ddof=1),
        "sharpe_20": last20.mean() / (last20.std(ddof=1) + 1e-8),
        "size": np.log1p((c[t - 19 : t + 1, i] * v[t - 19 : t + 1, i]).mean()),
        "volume_z": (lv[-1] - lv.mean()) / (lv.std(ddof=1) + 1e-8),
        "hl_range": (small_panel.high[t, i] - small_panel.low[t, i]) / c[t, i],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(f[t, i, col[name]], value, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        scores[t, i],
        [expected["ret_20"], -expected["vol_20"], expected["sharpe_20"], -expected["size"]],
        rtol=1e-12,
    )
    assert np.isnan(f[:WINDOW]).all() and np.isfinite(f[WINDOW:]).all()


@pytest.mark.parametrize("cut", [WINDOW, 100, 399])
def test_features_only_use_the_past(small_panel, computed, cut):
    rng = np.random.default_rng(cut)
    noise = rng.uniform(0.5, 2.0, (small_panel.n_bars - cut, small_panel.n_assets))
    changed = dataclasses.replace(
        small_panel,
        **{
            name: np.concatenate([getattr(small_panel, name)[:cut],
                                  getattr(small_panel, name)[cut:] * noise])
            for name in ("open", "high", "low", "close", "adj_close", "volume")
        },
    )
    f2, s2 = feats.compute(changed)
    f, s = computed
    np.testing.assert_array_equal(f2[:cut], f[:cut])
    np.testing.assert_array_equal(s2[:cut], s[:cut])
    assert not np.allclose(f2[cut:], f[cut:])


def test_normalisation_uses_given_rows_only(computed):
    f = computed[0][WINDOW:]
    stats = feats.fit_stats(f[:200])
    unclipped = ((f - stats.mean) / stats.std)[:200].reshape(-1, 9)
    np.testing.assert_allclose(unclipped.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(unclipped.std(0), 1, rtol=1e-9)
    z = feats.normalize(f, stats)
    np.testing.assert_array_equal(z, np.clip((f - stats.mean) / stats.std, -10, 10))
    # Later rows do not affect the statistics, and extreme values are clipped.
    f_changed = f.copy()
    f_changed[200:] *= 100
    np.testing.assert_array_equal(feats.fit_stats(f_changed[:200]).mean, stats.mean)
    np.testing.assert_array_equal(feats.fit_stats(f_changed[:200]).std, stats.std)
    assert np.abs(feats.normalize(f_changed, stats)).max() == feats.CLIP


def test_stats_round_trip_and_constant_feature():
    x = np.ones((10, 3, len(FEATURE_NAMES)))
    stats = feats.fit_stats(x)
    np.testing.assert_array_equal(stats.std, 1.0)
    again = feats.FeatureStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.mean, stats.mean)
    with pytest.raises(ValueError, match="feature names"):
        feats.FeatureStats.from_dict({"names": ["x"], "mean": [0.0], "std": [1.0]})
