"""The 12 portfolio regimes: the action space, and how each turns factor scores into target weights.

Every regime is a rule, not a stock pick, so the same 12 actions work for any
number of assets A. Weights are over A assets plus cash (the last entry).

| idx | name          | cash | stocks                                             |
|-----|---------------|------|----------------------------------------------------|
| 0   | HOLD          |  -   | no trade: target = current (drifted) weights       |
| 1   | FULL_CASH     | 100% | none                                               |
| 2   | DEFENSIVE     |  50% | equal weight over all A assets                     |
| 3   | LIGHT_CASH    |  25% | equal weight over all A assets                     |
| 4   | EQUAL_WEIGHT  |   0% | equal weight over all A assets                     |
| 5   | MOMENTUM      |   0% | equal weight over the top 50% by momentum          |
| 6   | LOW_VOL       |   0% | equal weight over the top 50% by low volatility    |
| 7   | QUALITY       |   0% | equal weight over the top 50% by quality (Sharpe)  |
| 8   | SIZE_SMALL    |   0% | equal weight over the top 50% by size score        |
| 9   | SAFE_MOMENTUM |  30% | the MOMENTUM basket                                |
| 10  | SAFE_QUALITY  |  30% | the QUALITY basket                                 |
| 11  | RISK_ON       |   0% | equal weight over the top 30% by momentum          |

"Top p%" selects k = ceil(p * A / 100) assets (at least 1) with the highest score
of bar t-1 (`jaxtrade.data.features` defines the scores; size scores smaller
companies higher), ties broken by asset order; the stock part of the portfolio is
split equally among them. So MOMENTUM with 12 assets holds 6 at 1/6 each, RISK_ON
holds 4 at 1/4 each, SAFE_MOMENTUM holds 6 at 0.7/6 each plus 30% cash.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np


class Regime(enum.IntEnum):
    HOLD = 0
    FULL_CASH = 1
    DEFENSIVE = 2
    LIGHT_CASH = 3
    EQUAL_WEIGHT = 4
    MOMENTUM = 5
    LOW_VOL = 6
    QUALITY = 7
    SIZE_SMALL = 8
    SAFE_MOMENTUM = 9
    SAFE_QUALITY = 10
    RISK_ON = 11


NAMES = tuple(r.name for r in Regime)
N_REGIMES = len(Regime)

# Score columns (jaxtrade.data.features.SCORE_NAMES).
MOMENTUM, LOW_VOL, QUALITY, SIZE = 0, 1, 2, 3

# Per regime: (cash fraction, score column, top percent of assets held).
# HOLD's row is unused; equal-weight rows hold 100% of assets, so the score is irrelevant.
TABLE = np.array(
    [
        (0.00, MOMENTUM, 100),  # HOLD
        (1.00, MOMENTUM, 100),  # FULL_CASH
        (0.50, MOMENTUM, 100),  # DEFENSIVE
        (0.25, MOMENTUM, 100),  # LIGHT_CASH
        (0.00, MOMENTUM, 100),  # EQUAL_WEIGHT
        (0.00, MOMENTUM, 50),  # MOMENTUM
        (0.00, LOW_VOL, 50),  # LOW_VOL
        (0.00, QUALITY, 50),  # QUALITY
        (0.00, SIZE, 50),  # SIZE_SMALL
        (0.30, MOMENTUM, 50),  # SAFE_MOMENTUM
        (0.30, QUALITY, 50),  # SAFE_QUALITY
        (0.00, MOMENTUM, 30),  # RISK_ON
    ]
)
# numpy, not jnp: importing this module must not start a JAX backend (a multi-process
# run initializes jax.distributed after the imports).
_CASH = TABLE[:, 0].astype(np.float32)
_SCORE = TABLE[:, 1].astype(np.int32)
_TOP_PCT = TABLE[:, 2].astype(np.int32)


def target_weights(action: jax.Array, scores: jax.Array, current: jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
    """Target weights of one regime.

    Args:
      action: int32 [] regime index.
      scores: float32 [A, 4] factor scores of bar t-1.
      current: float32 [A + 1] current weights (assets, then cash), used by HOLD.
      mask: bool [A], the assets that exist (a procedural world pads its assets to a
        common A): the others get no weight and do not count in "top p%" or "all";
        None: all of them.

    Returns:
      float32 [A + 1], non-negative, summing to 1.
    """
    size = scores.shape[0]
    score = scores[:, jnp.asarray(_SCORE)[action]]
    n_assets = size if mask is None else jnp.sum(mask, dtype=jnp.int32)
    if mask is not None:
        score = jnp.where(mask, score, -jnp.inf)  # ranked after every asset that exists
    k = jnp.maximum((jnp.asarray(_TOP_PCT)[action] * n_assets + 99) // 100, 1)
    # rank[i] = position of asset i in a stable descending sort of the score.
    order = jnp.argsort(-score, stable=True)
    rank = jnp.zeros(size, jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
    cash = jnp.asarray(_CASH)[action]
    stocks = jnp.where(rank < k, (1.0 - cash) / k, 0.0)
    target = jnp.concatenate([stocks, cash[None]]).astype(jnp.float32)
    return jnp.where(action == Regime.HOLD, current, target)


def coinciding(n_assets: int) -> list[tuple[str, ...]]:
    """Groups of regimes that are the same position for every score with `n_assets` assets.

    Two regimes coincide when they hold the same cash and either both hold every asset
    (the score does not matter) or both rank by the same score and hold as many assets.
    With one asset, for example, MOMENTUM is EQUAL_WEIGHT. HOLD coincides with none.
    Host-side (numpy); the groups come in regime order.
    """
    groups: dict[tuple, list[str]] = {}
    for r in Regime:
        if r == Regime.HOLD:
            continue
        k = max((int(_TOP_PCT[r]) * n_assets + 99) // 100, 1)
        basket = "all" if k >= n_assets else (int(_SCORE[r]), k)
        groups.setdefault((float(_CASH[r]), basket), []).append(r.name)
    return [tuple(names) for names in groups.values() if len(names) > 1]
