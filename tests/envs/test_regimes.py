"""Regime target weights, checked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.envs.regimes import NAMES, Regime, coinciding, target_weights

weights_of = jax.jit(target_weights)

# 12 assets; scores columns: momentum, low_vol, quality, size.
SCORES = np.stack(
    [
        np.arange(12.0),  # momentum: asset 11 highest
        -np.arange(12.0),  # low_vol: asset 0 highest
        np.array([5, 3, 9, 1, 7, 11, 0, 2, 8, 4, 10, 6.0]),  # quality
        np.arange(12.0) % 3,  # size: ties (2 for assets 2, 5, 8, 11)
    ],
    axis=1,
).astype(np.float32)
CURRENT = np.full(13, 1 / 13, np.float32)


def w(regime, scores=SCORES, current=CURRENT):
    return np.asarray(weights_of(jnp.int32(regime), jnp.asarray(scores), jnp.asarray(current)))


def test_names_follow_the_reference_order():
    assert NAMES == (
        "HOLD", "FULL_CASH", "DEFENSIVE", "LIGHT_CASH", "EQUAL_WEIGHT", "MOMENTUM", "LOW_VOL",
        "QUALITY", "SIZE_SMALL", "SAFE_MOMENTUM", "SAFE_QUALITY", "RISK_ON",
    )


def test_cash_and_equal_weight_regimes():
    np.testing.assert_allclose(w(Regime.HOLD), CURRENT)
    np.testing.assert_allclose(w(Regime.FULL_CASH), [0] * 12 + [1])
    np.testing.assert_allclose(w(Regime.DEFENSIVE), [0.5 / 12] * 12 + [0.5], rtol=1e-6)
    np.testing.assert_allclose(w(Regime.LIGHT_CASH), [0.75 / 12] * 12 + [0.25], rtol=1e-6)
    np.testing.assert_allclose(w(Regime.EQUAL_WEIGHT), [1 / 12] * 12 + [0], rtol=1e-6)


def _basket(assets, each, cash):
    out = np.zeros(13)
    out[list(assets)] = each
    out[12] = cash
    return out


@pytest.mark.parametrize(
    "regime, expected",
    [
        (Regime.MOMENTUM, _basket(range(6, 12), 1 / 6, 0)),
        (Regime.LOW_VOL, _basket(range(0, 6), 1 / 6, 0)),
        (Regime.QUALITY, _basket([5, 10, 2, 8, 4, 11], 1 / 6, 0)),
        # Size ties: 2, 5, 8, 11 score 2; then 1, 4 (score 1) by asset order.
        (Regime.SIZE_SMALL, _basket([2, 5, 8, 11, 1, 4], 1 / 6, 0)),
        (Regime.SAFE_MOMENTUM, _basket(range(6, 12), 0.7 / 6, 0.3)),
        (Regime.SAFE_QUALITY, _basket([5, 10, 2, 8, 4, 11], 0.7 / 6, 0.3)),
        (Regime.RISK_ON, _basket([8, 9, 10, 11], 1 / 4, 0)),  # ceil(30% of 12) = 4
    ],
)
def test_factor_regimes(regime, expected):
    np.testing.assert_allclose(w(regime), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_assets, top", [(1, (1, 1)), (2, (1, 1)), (3, (2, 1)), (10, (5, 3))])
def test_any_number_of_assets(n_assets, top):
    rng = np.random.default_rng(n_assets)
    scores = rng.normal(size=(n_assets, 4)).astype(np.float32)
    current = rng.dirichlet(np.ones(n_assets + 1)).astype(np.float32)
    for regime in Regime:
        out = w(regime, scores, current)
        assert out.shape == (n_assets + 1,)
        assert (out >= 0).all() and abs(out.sum() - 1) < 1e-6
    assert np.count_nonzero(w(Regime.MOMENTUM, scores, current)[:-1]) == top[0]
    assert np.count_nonzero(w(Regime.RISK_ON, scores, current)[:-1]) == top[1]
    best = np.argmax(scores[:, 0])
    assert w(Regime.RISK_ON, scores, current)[best] > 0


@pytest.mark.parametrize("n_assets", [1, 2, 3, 4, 12])
def test_coinciding_regimes_are_exactly_those_with_equal_weights_for_any_scores(n_assets):
    """The groups `coinciding` names (for the banner) against the weights themselves, over
    random scores: same group <=> the same target for every draw."""
    rng = np.random.default_rng(n_assets)
    draws = rng.normal(size=(64, n_assets, 4)).astype(np.float32)
    current = np.full(n_assets + 1, 1 / (n_assets + 1), np.float32)
    targets = {r.name: np.stack([w(r, d, current) for d in draws]) for r in Regime
               if r != Regime.HOLD}
    same = {(a, b) for a in targets for b in targets
            if a < b and np.allclose(targets[a], targets[b])}
    named = {(a, b) for group in coinciding(n_assets) for a in group for b in group if a < b}
    assert named == same
    if n_assets == 1:
        assert coinciding(1) == [("EQUAL_WEIGHT", "MOMENTUM", "LOW_VOL", "QUALITY", "SIZE_SMALL",
                                  "RISK_ON"), ("SAFE_MOMENTUM", "SAFE_QUALITY")]
