"""A plain numpy implementation of one portfolio step, written from the docs, for parity tests."""

import math

import numpy as np

# (cash, score column, top percent) per regime, transcribed from the regimes docstring table.
REGIME_RULES = {
    1: (1.00, 0, 100),
    2: (0.50, 0, 100),
    3: (0.25, 0, 100),
    4: (0.00, 0, 100),
    5: (0.00, 0, 50),
    6: (0.00, 1, 50),
    7: (0.00, 2, 50),
    8: (0.00, 3, 50),
    9: (0.30, 0, 50),
    10: (0.30, 2, 50),
    11: (0.00, 0, 30),
}


def target_weights(action, scores, current):
    """scores [A, 4] float64, current [A + 1] -> [A + 1]."""
    if action == 0:
        return current.copy()
    cash, col, pct = REGIME_RULES[action]
    n = scores.shape[0]
    k = max(math.ceil(pct * n / 100), 1)
    chosen = sorted(range(n), key=lambda i: (-scores[i, col], i))[:k]
    w = np.zeros(n + 1)
    w[chosen] = (1 - cash) / k
    w[n] = cash
    return w


def step(market, t, step_count, value, peak, weights, action, u, p):
    """One step. market: dict of float64 arrays; p: dict of scalar params; u: [A] U[0,1] draws."""
    price, scores, features = market["price"], market["scores"], market["features"]
    n = price.shape[1]
    g = price[t] / price[t - 1]
    held = np.concatenate([weights[:n] * g, weights[n:]])
    v_pre = value * held.sum()
    w_pre = held / held.sum()
    target = target_weights(action, scores[t - 1], w_pre)
    q = np.abs(target[:n] - w_pre[:n]) * v_pre
    slip = p["slippage"] * np.sum(u * q)
    spread = p["spread"] * np.sum(q)
    impact = p["impact"] * np.sum(np.sqrt(q / v_pre) * q)
    v_post = v_pre - slip - spread - impact
    v_next = v_post * (target[:n] @ (price[t + 1] / price[t]) + target[n])
    new_peak = max(peak, v_post)
    turnover = q.sum() / v_pre
    dd_next = 1 - v_next / max(new_peak, v_next)
    reward = (
        math.log(v_next / v_pre)
        - p["turnover_penalty"] * turnover
        - p["drawdown_penalty"] * dd_next
        # reward_benchmark = equal_weight: minus the equal-weight index's log growth
        - p.get("benchmark_weight", 0.0) * math.log(np.mean(price[t + 1] / price[t]))
    )
    terminated = v_next < p["ruin_fraction"]
    truncated = (not terminated) and (step_count + 1 >= p["episode_length"] or t + 2 > p["end"])
    obs = np.concatenate(
        [
            features[t].reshape(-1),  # bar (t + 1) - 1: the next decision sees bar t
            target,
            [1 - v_post / new_peak, (step_count + 1) / p["episode_length"]],
        ]
    )
    return {
        "obs": obs,
        "reward": reward,
        "value": v_next,
        "value_post": v_post,
        "peak": new_peak,
        "weights": target,
        "turnover": turnover,
        "cost_slippage": slip,
        "cost_spread": spread,
        "cost_impact": impact,
        "terminated": terminated,
        "truncated": truncated,
    }
