"""Friction formulas on hand-computed trades."""

import jax.numpy as jnp
import numpy as np

from jaxtrade.envs.frictions import trade_costs


def test_costs_by_hand():
    traded = jnp.array([0.25, 0.0, 0.04])  # currency traded per asset
    value = jnp.float32(1.0)
    draws = jnp.array([1.0, 0.3, 0.5])
    c = trade_costs(traded, value, draws, slippage=0.0005, spread=0.0002, impact=0.01)
    np.testing.assert_allclose(c.slippage, 0.0005 * (0.25 + 0.5 * 0.04), rtol=1e-6)
    np.testing.assert_allclose(c.spread, 0.0002 * 0.29, rtol=1e-6)
    # impact = 0.01 * sqrt(q / V) * q: 0.01 * 0.5 * 0.25 + 0.01 * 0.2 * 0.04
    np.testing.assert_allclose(c.impact, 0.00125 + 0.00008, rtol=1e-6)
    np.testing.assert_allclose(c.total, c.slippage + c.spread + c.impact)


def test_impact_scales_with_portfolio_value_and_zero_coefficients():
    traded = jnp.array([0.5])
    small = trade_costs(traded, jnp.float32(1.0), jnp.ones(1), 0.0, 0.0, 0.01)
    large = trade_costs(traded * 10, jnp.float32(10.0), jnp.ones(1), 0.0, 0.0, 0.01)
    np.testing.assert_allclose(large.impact, 10 * small.impact, rtol=1e-6)
    zero = trade_costs(traded, jnp.float32(1.0), jnp.ones(1), 0.0, 0.0, 0.0)
    assert float(zero.total) == 0.0
    nothing = trade_costs(jnp.zeros(3), jnp.float32(1.0), jnp.ones(3), 0.0005, 0.0002, 0.01)
    assert float(nothing.total) == 0.0
