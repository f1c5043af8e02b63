"""Did a strategy beat a baseline *with confidence*? Sharpe-ratio statistics (host-only numpy).

Host-only: numpy, `statistics.NormalDist` and `arch` (stationary bootstrap and its
automatic block length); no JAX. It answers the evaluation report's two questions:

* is a strategy's Sharpe ratio above zero once its sample length, non-normality and
  the number of candidate models compared are accounted for: the probabilistic
  Sharpe ratio (PSR, Bailey & López de Prado 2012, "The Sharpe Ratio Efficient
  Frontier") and the deflated Sharpe ratio (DSR, Bailey & López de Prado 2014,
  "The Deflated Sharpe Ratio"), `strategy_stats`;
* is the policy's Sharpe ratio above the baseline's: a percentile interval of the
  Sharpe difference from a paired stationary bootstrap (Politis & Romano 1994),
  `compare_sharpe`; and an interval of a strategy's annualised return,
  `annualised_return_interval`.

Inputs are per-bar simple returns ``r_t = V_t / V_{t-1} - 1`` of an equity curve of
T + 1 marks: float arrays [T], T >= 3, finite. The Sharpe ratio is of the raw
returns (risk-free 0, as `jaxtrade.metrics`); pass excess returns if a rate matters.

Conventions (those of the papers, which estimate the moments of the returns'
distribution and plug them into Mertens' asymptotic variance of the Sharpe ratio):

* moments are the plain moment estimators over the T bars, divisor T (``ddof=0``,
  as `jaxtrade.metrics`): mean m, variance s^2 = mean((r - m)^2), skewness
  mean((r - m)^3) / s^3, kurtosis mean((r - m)^4) / s^4, NOT excess (3 for a normal
  distribution; scipy's ``skew(bias=True)`` and ``kurtosis(fisher=False, bias=True)``);
* SR = m / s per bar, never annualised inside PSR/DSR; ``SR * sqrt(bars_per_year)``
  is only reported;
* PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)),
  with T the number of returns (T - 1 as in both papers). With these moment
  estimators g4 >= g3^2 + 1, so the square root's argument is >= (1 - g3 SR / 2)^2;
* DSR = PSR(SR0), SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))),
  V the variance of the N trials' per-bar Sharpe ratios, gamma Euler-Mascheroni.

Annualisation uses ``bars_per_year`` (252 for daily bars), as `jaxtrade.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
from arch.bootstrap import StationaryBootstrap
from arch.bootstrap import optimal_block_length as _arch_optimal_block_length

EULER_GAMMA = 0.5772156649015329
MIN_OBS = 3  # returns needed for a Sharpe ratio and a skewness (an equity curve of 4 marks)
# arch's Politis-White estimator scans ceil(sqrt(T)) + 5 autocorrelation lags; below
# this length it divides by empty sums, so `optimal_block_length` uses T^(1/3) instead.
MIN_OBS_AUTO_BLOCK = 20
CONSTANT_STD = 1e-12  # a per-bar std at or below this is a constant series (rounding noise)
DEFAULT_LEVEL = 0.9  # two-sided confidence level of the bootstrap intervals
DEFAULT_RESAMPLES = 2_000  # bootstrap resamples: 5%/95% bounds vary ~0.05 SE across seeds
_CHUNK = 256  # resamples gathered at once: bounds the [chunk, T] working arrays
_NORMAL = NormalDist()


# ------------------------------------------------------------------ validation
def _as_returns(returns: np.ndarray, name: str = "returns") -> np.ndarray:
    """`returns` as float64 [T], or a ValueError that says what is wrong with them."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-bar returns, got shape {r.shape}")
    if r.shape[0] < MIN_OBS:
        raise ValueError(
            f"{name} has {r.shape[0]} per-bar returns; at least {MIN_OBS} (an equity curve of "
            f"{MIN_OBS + 1} marks) are needed for a Sharpe ratio and its skewness"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} contains non-finite values")
    return r


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_n_obs(n_obs: int) -> None:
    if n_obs < MIN_OBS:
        raise ValueError(f"n_obs must be at least {MIN_OBS}, got {n_obs}")


# ------------------------------------------------------------------ moments, PSR, DSR
class Moments(NamedTuple):
    """Per-bar Sharpe ratio, skewness and (non-excess) kurtosis of one return series."""

    sharpe: float
    skewness: float
    kurtosis: float


def moments(returns: np.ndarray, name: str = "returns") -> Moments:
    """`Moments` of per-bar returns [T] (divisor T); ValueError when they are constant."""
    r = _as_returns(returns, name)
    centred = r - r.mean()
    var = float(np.mean(centred**2))
    std = math.sqrt(var)
    if std <= CONSTANT_STD:
        raise ValueError(
            f"{name} are constant (std {std:.3g}): their Sharpe ratio, skewness and "
            "kurtosis are undefined"
        )
    return Moments(
        sharpe=float(r.mean()) / std,
        skewness=float(np.mean(centred**3)) / std**3,
        kurtosis=float(np.mean(centred**4)) / var**2,
    )


def sharpe_ratio(returns: np.ndarray) -> float:
    """Per-bar (not annualised) Sharpe ratio ``mean / std`` (ddof 0) of returns [T]."""
    return moments(returns).sharpe


def probabilistic_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    skewness: float = 0.0,
    kurtosis: float = 3.0,
    benchmark: float = 0.0,
) -> float:
    """PSR: probability that the true per-bar Sharpe ratio exceeds `benchmark`.

    Args:
      sharpe: estimated per-bar Sharpe ratio of `n_obs` returns.
      n_obs: T, the number of returns it was estimated from.
      skewness, kurtosis: of the returns; kurtosis is non-excess (normal = 3).
      benchmark: SR*, per bar.
    """
    _check_n_obs(n_obs)
    spread = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not spread > 0.0:
        raise ValueError(
            f"1 - skewness * SR + (kurtosis - 1) / 4 * SR^2 = {spread:.3g} is not positive: "
            "skewness and kurtosis are not moments of one distribution"
        )
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(spread))


def expected_max_sharpe(n_trials: float, trial_sharpe_variance: float) -> float:
    """SR0: expected maximum per-bar Sharpe ratio of `n_trials` zero-skill trials.

    ``sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``, the DSR
    paper's eq. 1 with E[SR_n] = 0. `n_trials` may be fractional (an effective number
    of independent trials, that paper's eq. 9). N = 1 gives 0: one trial is not a
    selection. The approximation is for N >> 1 and goes to -inf as N -> 1+; the
    expected maximum of N >= 1 zero-mean trials is >= 0, so it is floored at 0.

    Args:
      n_trials: N >= 1, the number of candidates the strategy was selected from.
      trial_sharpe_variance: V >= 0, the variance of the trials' per-bar Sharpe ratios.
    """
    if not n_trials >= 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not (math.isfinite(trial_sharpe_variance) and trial_sharpe_variance >= 0.0):
        raise ValueError(
            f"trial_sharpe_variance must be finite and >= 0, got {trial_sharpe_variance}"
        )
    if n_trials == 1 or trial_sharpe_variance == 0.0:
        return 0.0
    z = (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials) + EULER_GAMMA * _NORMAL.inv_cdf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return max(0.0, math.sqrt(trial_sharpe_variance) * z)


def deflated_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    n_trials: float,
    trial_sharpe_variance: float,
    skewness: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """DSR: PSR against `expected_max_sharpe(n_trials, trial_sharpe_variance)`, per bar.

    The probability that the selected strategy's true Sharpe ratio is above what the
    best of `n_trials` skill-less candidates would show. N = 1 or V = 0 give PSR(0).
    """
    threshold = expected_max_sharpe(n_trials, trial_sharpe_variance)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skewness, kurtosis, benchmark=threshold)


@dataclass(frozen=True)
class StrategyStats:
    """One strategy's Sharpe ratio and its significance; `to_dict` is JSON-ready."""

    n_obs: int  # T, the number of per-bar returns
    bars_per_year: float  # annualisation factor of `sharpe_annualised`
    sharpe: float  # per-bar Sharpe ratio, mean / std (ddof 0)
    sharpe_annualised: float  # sharpe * sqrt(bars_per_year)
    skewness: float  # of the per-bar returns
    kurtosis: float  # of the per-bar returns, non-excess (normal = 3)
    psr: float  # P[true Sharpe > 0]
    dsr: float  # P[true Sharpe > sharpe_threshold]: PSR after selection among n_trials
    n_trials: float  # candidates the strategy was selected from (1: no selection)
    trial_sharpe_variance: float  # variance of the candidates' per-bar Sharpe ratios
    sharpe_threshold: float  # SR0, per bar: expected best Sharpe of n_trials null candidates

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def strategy_stats(
    returns: np.ndarray,
    bars_per_year: float,
    n_trials: float = 1,
    trial_sharpe_variance: float = 0.0,
) -> StrategyStats:
    """`StrategyStats` of per-bar returns [T], selected from `n_trials` candidates.

    Args:
      returns: float [T] per-bar simple returns, T >= 3, not constant.
      bars_per_year: bars in a year (252 for daily bars), for the annualised Sharpe only.
      n_trials: N >= 1 candidates compared to pick this strategy (e.g. checkpoints,
        seeds, hyperparameter sets), or an effective number of independent ones.
      trial_sharpe_variance: variance of those candidates' per-bar Sharpe ratios.
    """
    r = _as_returns(returns)
    m = moments(r)
    threshold = expected_max_sharpe(n_trials, trial_sharpe_variance)
    return StrategyStats(
        n_obs=int(r.shape[0]),
        bars_per_year=float(bars_per_year),
        sharpe=m.sharpe,
        sharpe_annualised=m.sharpe * math.sqrt(bars_per_year),
        skewness=m.skewness,
        kurtosis=m.kurtosis,
        psr=probabilistic_sharpe_ratio(m.sharpe, r.shape[0], m.skewness, m.kurtosis),
        dsr=probabilistic_sharpe_ratio(m.sharpe, r.shape[0], m.skewness, m.kurtosis, threshold),
        n_trials=float(n_trials),
        trial_sharpe_variance=float(trial_sharpe_variance),
        sharpe_threshold=threshold,
    )


# ------------------------------------------------------------------ stationary bootstrap
def optimal_block_length(*series: np.ndarray) -> float:
    """Mean block length b for a stationary bootstrap of aligned series [T], in bars.

    The largest of arch's Politis & White (2004) estimates, with the Patton, Politis &
    White (2009) correction, over the series given: one b that keeps the longest
    dependence of any of them. At least 1 (iid data can give < 1: resample bar by
    bar). Series shorter than `MIN_OBS_AUTO_BLOCK`, or whose estimate is undefined
    (a constant column), fall back to the rule b = T^(1/3).
    """
    columns = np.column_stack([np.asarray(s, dtype=np.float64) for s in series])
    n_obs = columns.shape[0]
    fallback = n_obs ** (1.0 / 3.0)
    if n_obs < MIN_OBS_AUTO_BLOCK:
        return fallback
    with np.errstate(all="ignore"):  # a constant column divides 0 by 0 inside arch
        b = _arch_optimal_block_length(columns)["stationary"].to_numpy()
    b = b[np.isfinite(b)]
    return float(np.clip(b.max(), 1.0, n_obs)) if b.size else fallback


def _index_chunks(
    n_obs: int, mean_block: float, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Stationary-bootstrap indices in chunks of int [<= _CHUNK, n_obs] rows."""
    if not 1.0 <= mean_block <= n_obs:
        raise ValueError(f"mean_block must be in [1, {n_obs}] bars, got {mean_block}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    bootstrap = StationaryBootstrap(mean_block, np.arange(n_obs), seed=np.random.default_rng(seed))
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        yield np.stack([bootstrap.update_indices() for _ in range(size)])


def stationary_bootstrap_indices(
    n_obs: int, mean_block: float, n_resamples: int, seed: int = 0
) -> np.ndarray:
    """Politis & Romano (1994) resample indices: int [n_resamples, n_obs].

    Each row concatenates blocks that start at a uniform bar and run on, wrapping
    from bar T - 1 to bar 0, for a geometric number of bars of mean `mean_block`
    (a new block starts at each bar with probability 1 / mean_block). Deterministic
    given `seed` (a numpy Generator seeded with it drives arch's sampler).
    """
    return np.concatenate(list(_index_chunks(n_obs, mean_block, n_resamples, seed)))


def _percentile_interval(
    stat: Callable[[np.ndarray], np.ndarray],
    n_obs: int,
    mean_block: float,
    n_resamples: int,
    seed: int,
    level: float,
) -> tuple[float, float]:
    """Percentile bounds of `stat` (int [B, T] indices -> float [B]) over the resamples.

    A resample whose statistic is undefined (e.g. all drawn returns equal) is dropped.
    """
    draws = np.concatenate(
        [stat(idx) for idx in _index_chunks(n_obs, mean_block, n_resamples, seed)]
    )
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        raise ValueError("the statistic is undefined on every bootstrap resample")
    low, high = np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _row_sharpe(rows: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe ratio of each row of [B, T] (ddof 0); NaN for a constant row."""
    std = rows.std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > CONSTANT_STD, rows.mean(axis=1) / std, np.nan)


def _row_annualised_return(rows: np.ndarray, bars_per_year: float) -> np.ndarray:
    """``prod(1 + r) ** (bars_per_year / T) - 1`` of each row of [B, T]; -1 after a wipe-out."""
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf -> expm1(-inf) = -1
        return np.expm1(np.log1p(rows).mean(axis=1) * bars_per_year)


def annualised_return(returns: np.ndarray, bars_per_year: float) -> float:
    """Geometric annualised return ``prod(1 + r) ** (bars_per_year / T) - 1`` of returns [T].

    As `jaxtrade.metrics.annualised_return` of the equity curve; -1 after a bar
    that lost everything (r = -1). Returns below -1 are a ValueError.
    """
    r = _as_returns(returns)
    if np.any(r < -1.0):
        raise ValueError("returns below -1 (a value that went negative) have no annualised return")
    return float(_row_annualised_return(r[None, :], bars_per_year)[0])


@dataclass(frozen=True)
class BootstrapInterval:
    """A statistic and its stationary-bootstrap percentile interval; `to_dict` is JSON-ready."""

    estimate: float  # the statistic on the whole sample
    ci_low: float  # (1 - level) / 2 percentile of the bootstrap distribution
    ci_high: float  # (1 + level) / 2 percentile
    level: float  # two-sided confidence level
    n_obs: int  # T, the number of per-bar returns
    mean_block: float  # mean block length b of the stationary bootstrap, in bars
    n_resamples: int  # bootstrap resamples
    seed: int  # seed of the resampling Generator

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SharpeComparison:
    """Policy-minus-baseline annualised Sharpe ratio, paired bootstrap; `to_dict` is JSON-ready."""

    sharpe_diff: float  # Sharpe(policy) - Sharpe(baseline), annualised, whole sample
    ci_low: float  # lower percentile bound of the difference, annualised
    ci_high: float  # upper percentile bound, annualised
    level: float  # two-sided confidence level of [ci_low, ci_high]
    beat_with_confidence: bool  # ci_low > 0: the whole interval is above 0
    n_obs: int  # T, the number of aligned per-bar returns
    bars_per_year: float  # annualisation factor
    mean_block: float  # mean block length b of the stationary bootstrap, in bars
    n_resamples: int  # bootstrap resamples
    seed: int  # seed of the resampling Generator

    def to_dict(self) -> dict[str, float | int | bool]:
        return dataclasses.asdict(self)


def compare_sharpe(
    policy: np.ndarray,
    baseline: np.ndarray,
    bars_per_year: float,
    level: float = DEFAULT_LEVEL,
    mean_block: float | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> SharpeComparison:
    """Sharpe(policy) - Sharpe(baseline) with a paired stationary-bootstrap interval.

    Both series are resampled at the SAME indices, so their dependence (same bars,
    same market) is kept in the interval. The policy beats the baseline with
    confidence when the interval's lower bound is above 0. A constant baseline (cash:
    no excess return, no risk) has Sharpe ratio 0, in the sample and in every resample,
    so the interval is then that of the policy's own Sharpe ratio.

    Args:
      policy, baseline: float [T] per-bar returns over the same bars.
      bars_per_year: bars in a year; the difference is reported annualised.
      level: two-sided confidence level of the interval.
      mean_block: mean block length in bars; None: `optimal_block_length` of both
        series and of their squared deviations (a Sharpe ratio depends on both).
      n_resamples: bootstrap resamples.
      seed: seed of the numpy Generator that drives the resampling.
    """
    p = _as_returns(policy, "policy")
    q = _as_returns(baseline, "baseline")
    if p.shape != q.shape:
        raise ValueError(
            f"policy and baseline must be aligned, got {p.shape[0]} and {q.shape[0]} bars"
        )
    _check_level(level)
    scale = math.sqrt(bars_per_year)
    cash = bool(q.std() <= CONSTANT_STD)
    base_sharpe = 0.0 if cash else moments(q, "baseline").sharpe
    diff = (moments(p, "policy").sharpe - base_sharpe) * scale
    if mean_block is None:
        series = (p, (p - p.mean()) ** 2) if cash else (p, q, (p - p.mean()) ** 2,
                                                         (q - q.mean()) ** 2)
        mean_block = optimal_block_length(*series)
    low, high = _percentile_interval(
        lambda idx: (_row_sharpe(p[idx]) - (0.0 if cash else _row_sharpe(q[idx]))) * scale,
        p.shape[0],
        mean_block,
        n_resamples,
        seed,
        level,
    )
    return SharpeComparison(
        sharpe_diff=diff,
        ci_low=low,
        ci_high=high,
        level=float(level),
        beat_with_confidence=bool(low > 0.0),
        n_obs=int(p.shape[0]),
        bars_per_year=float(bars_per_year),
        mean_block=float(mean_block),
        n_resamples=int(n_resamples),
        seed=int(seed),
    )


def annualised_return_interval(
    returns: np.ndarray,
    bars_per_year: float,
    level: float = DEFAULT_LEVEL,
    mean_block: float | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapInterval:
    """`annualised_return` of returns [T] with a stationary-bootstrap percentile interval.

    `mean_block` None: `optimal_block_length` of the returns. Other arguments as
    `compare_sharpe`.
    """
    r = _as_returns(returns)
    estimate = annualised_return(r, bars_per_year)
    _check_level(level)
    if mean_block is None:
        mean_block = optimal_block_length(r)
    low, high = _percentile_interval(
        lambda idx: _row_annualised_return(r[idx], bars_per_year),
        r.shape[0],
        mean_block,
        n_resamples,
        seed,
        level,
    )
    return BootstrapInterval(
        estimate=estimate,
        ci_low=low,
        ci_high=high,
        level=float(level),
        n_obs=int(r.shape[0]),
        mean_block=float(mean_block),
        n_resamples=int(n_resamples),
        seed=int(seed),
    )
