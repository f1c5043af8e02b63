"""Trading frictions: slippage, bid-ask spread and square-root market impact.

For a trade of value q_i = |target_i - w_i| * V in asset i (V = portfolio value
before the trade, w = drifted weights, cash trades free):

| friction | cost of the trade                             | default coefficient |
|----------|-----------------------------------------------|---------------------|
| slippage | u_i * slippage * q_i,  u_i ~ U[0, 1] per asset | slippage = 0.0005   |
| spread   | spread * q_i                                  | spread = 0.0002     |
| impact   | impact * sqrt(q_i / V) * q_i                  | impact = 0.01       |

Slippage always moves the price against the trade (buys fill higher, sells
lower), so it is a cost either way. Costs are paid out of the portfolio; the
post-trade holdings are the target weights times the value left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Costs:
    """Costs of one rebalance, in portfolio currency (initial value 1)."""

    slippage: jax.Array  # float32 []
    spread: jax.Array  # float32 []
    impact: jax.Array  # float32 []

    @property
    def total(self) -> jax.Array:
        return self.slippage + self.spread + self.impact


def trade_costs(
    traded: jax.Array,
    value: jax.Array,
    slippage_draw: jax.Array,
    slippage: jax.Array,
    spread: jax.Array,
    impact: jax.Array,
) -> Costs:
    """Costs of trading `traded` currency in each asset out of a portfolio worth `value`.

    Args:
      traded: float32 [A], absolute traded value per asset (>= 0).
      value: float32 [], portfolio value before the trade (> 0).
      slippage_draw: float32 [A], U[0, 1] draws, one per asset.
      slippage, spread, impact: float32 [] coefficients (see the module table).
    """
    return Costs(
        slippage=slippage * jnp.sum(slippage_draw * traded),
        spread=spread * jnp.sum(traded),
        impact=impact * jnp.sum(jnp.sqrt(traded / value) * traded),
    )
