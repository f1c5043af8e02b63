"""Procedural markets generated on device: worlds an agent cannot memorise.

The embedded market (`jaxtrade.data.synthetic`) is one path of one model; ten years of
it is one sample, which a network with a million parameters can learn by heart. Here
the same model is a JAX program (a `lax.scan` over bars, vmapped over worlds), and each
world first draws its own settings from the prior ranges of `WorldPrior`, so an agent
trained on a stream of fresh worlds has to infer what kind of world it is in.

The model, per bar t and asset i of a world (log returns), as in the embedded market:

    r[t, i] = beta_i * m[t] + alpha * a[t, i] + idio_vol_i * s[k(t)] * e[t, i]

- k(t): a hidden 4-state Markov regime (bull, bear, high_vol, low_vol) that leaves its
  state with probability 1 / duration per bar, to one of the other three uniformly.
- m[t] = drift[k] + vol[k] * z[t]: the market factor, Student-t shocks z of the world's
  `tail_df`, scaled to unit variance; it is what correlates the assets.
- a[t, i]: a persistent cross-sectional signal, AR(1) with the world's persistence,
  unit variance, demeaned across the world's assets each bar; alpha = 0.0015 x the
  world's signal strength, which is 0 in a share `no_signal` of worlds (nothing to learn
  there but the regimes).
- e[t, i]: idiosyncratic Student-t noise, scaled by the regime's multiplier s[k].

Volume follows a per-asset size level with noise and more volume on large moves;
open, high and low are drawn around the close path, as in the embedded market.

A world has between `n_assets[0]` and `n_assets[1]` assets; arrays are padded to the
upper bound and `WorldBars.mask` says which assets exist (padding has price 1, volume
0 and no features). The features are `jaxtrade.data.features`' own, computed on device
by `features` (the jnp twin of `features.compute`, tested for parity with it).

Seeds: world j of stream s ("train", "validation", "test") of a run with seed q is
`world_key(q, s, j)`, so the three streams are disjoint and any world can be rebuilt
from (seed, stream, index) and its number of bars alone; `describe` gives a world's
settings as JSON. `python -m jaxtrade.worlds` prints and plots sampled worlds.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import struct

from jaxtrade.data import features as feats
from jaxtrade.data.panel import Panel
from jaxtrade.data.synthetic import REGIME_NAMES

STREAMS = ("train", "validation", "test")  # disjoint seed streams of a run's worlds
ALPHA_SCALE = 0.0015  # per-bar expected excess return of a 1-sd signal at strength 1
N_REGIMES = len(REGIME_NAMES)


@dataclasses.dataclass(frozen=True)
class WorldPrior:
    """The ranges each world draws its settings from (uniform unless said otherwise).

    Per regime, in `REGIME_NAMES` order (bull, bear, high_vol, low_vol): the market
    factor's per-bar drift and volatility, and the multiplier of idiosyncratic volatility.
    The defaults bracket the embedded market's values (drift 0.0007, -0.0012, -0.0002,
    0.0004; vol 0.009, 0.016, 0.026, 0.006; multipliers 1.0, 1.3, 1.8, 0.7).
    """

    n_assets: tuple[int, int] = (4, 24)  # assets of a world, inclusive
    drift_low: tuple[float, ...] = (0.0002, -0.0020, -0.0010, 0.0000)
    drift_high: tuple[float, ...] = (0.0012, -0.0004, 0.0006, 0.0008)
    vol_low: tuple[float, ...] = (0.006, 0.012, 0.018, 0.003)
    vol_high: tuple[float, ...] = (0.014, 0.024, 0.040, 0.009)
    idio_mult_low: tuple[float, ...] = (0.8, 1.0, 1.4, 0.5)
    idio_mult_high: tuple[float, ...] = (1.2, 1.6, 2.2, 0.9)
    duration: tuple[float, float] = (20.0, 250.0)  # mean bars a regime lasts (log-uniform)
    no_signal: float = 0.25  # share of worlds whose signal strength is 0
    signal_strength: tuple[float, float] = (0.25, 1.5)  # the others' strength
    persistence: tuple[float, float] = (0.95, 0.999)  # AR(1) coefficient of the signal
    beta_low: tuple[float, float] = (0.3, 0.9)  # lowest beta of a world's assets
    beta_spread: tuple[float, float] = (0.2, 0.8)  # highest minus lowest beta
    idio_vol: tuple[float, float] = (0.006, 0.025)  # per-asset idiosyncratic volatility
    tail_df: tuple[float, float] = (3.0, 10.0)  # Student-t degrees of freedom (> 2)

    def __post_init__(self):
        lo, hi = self.n_assets
        per_regime = (self.drift_low, self.drift_high, self.vol_low, self.vol_high,
                      self.idio_mult_low, self.idio_mult_high)
        checks = {
            "n_assets": 1 <= lo <= hi,
            "per-regime ranges": all(len(v) == N_REGIMES for v in per_regime)
            and all(a <= b for a, b in zip(self.drift_low, self.drift_high, strict=True))
            and all(0 < a <= b for a, b in zip(self.vol_low, self.vol_high, strict=True))
            and all(0 < a <= b for a, b in zip(self.idio_mult_low, self.idio_mult_high,
                                               strict=True)),
            "duration": 1 <= self.duration[0] <= self.duration[1],
            "no_signal": 0 <= self.no_signal <= 1,
            "signal_strength": 0 <= self.signal_strength[0] <= self.signal_strength[1],
            "persistence": 0 <= self.persistence[0] <= self.persistence[1] < 1,
            "beta": self.beta_spread[0] >= 0,
            "idio_vol": 0 < self.idio_vol[0] <= self.idio_vol[1],
            "tail_df": 2 < self.tail_df[0] <= self.tail_df[1],
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid world prior: {', '.join(bad)}")

    @property
    def max_assets(self) -> int:
        return self.n_assets[1]


@struct.dataclass
class WorldSettings:
    """One world's draw from the prior (leaves gain a leading [W] axis when vmapped)."""

    n_assets: jax.Array  # int32 []
    drift: jax.Array  # float32 [4] per regime
    vol: jax.Array  # float32 [4]
    idio_mult: jax.Array  # float32 [4]
    duration: jax.Array  # float32 [], mean bars per regime
    signal_strength: jax.Array  # float32 []; 0 = no signal
    persistence: jax.Array  # float32 []
    beta: jax.Array  # float32 [A_max]
    idio_vol: jax.Array  # float32 [A_max]
    tail_df: jax.Array  # float32 []


@struct.dataclass
class WorldBars:
    """A world's bars (leaves [T, A_max] unless said otherwise) and the hidden variables."""

    open: jax.Array
    high: jax.Array
    low: jax.Array
    close: jax.Array
    volume: jax.Array
    mask: jax.Array  # bool [A_max], the assets that exist
    regime: jax.Array  # int32 [T], index into REGIME_NAMES
    signal: jax.Array  # float32 [T, A_max], the demeaned latent signal (0 on padding)


def world_key(seed: int, stream: str, index: int | jax.Array) -> jax.Array:
    """The key of world `index` of `stream` for a run with `seed`: disjoint streams."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAMS.index(stream)),
                              index)


def sample_settings(key: jax.Array, prior: WorldPrior = WorldPrior()) -> WorldSettings:
    """One world's settings drawn from `prior` (traceable; vmap over keys for many)."""
    ks = jax.random.split(key, 12)
    a_max = prior.max_assets
    u = lambda k, lo, hi, shape=(): jax.random.uniform(  # noqa: E731
        k, shape, jnp.float32, jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32))
    log_dur = u(ks[0], math.log(prior.duration[0]), math.log(prior.duration[1]))
    has_signal = jax.random.uniform(ks[1]) >= prior.no_signal
    beta_lo = u(ks[2], *prior.beta_low)
    beta_hi = beta_lo + u(ks[3], *prior.beta_spread)
    return WorldSettings(
        n_assets=jax.random.randint(ks[4], (), prior.n_assets[0], prior.n_assets[1] + 1),
        drift=u(ks[5], prior.drift_low, prior.drift_high, (N_REGIMES,)),
        vol=u(ks[6], prior.vol_low, prior.vol_high, (N_REGIMES,)),
        idio_mult=u(ks[7], prior.idio_mult_low, prior.idio_mult_high, (N_REGIMES,)),
        duration=jnp.exp(log_dur),
        signal_strength=jnp.where(has_signal, u(ks[8], *prior.signal_strength), 0.0),
        persistence=u(ks[9], *prior.persistence),
        beta=beta_lo + (beta_hi - beta_lo) * jax.random.uniform(ks[10], (a_max,)),
        idio_vol=u(ks[11], *prior.idio_vol, (a_max,)),
        tail_df=u(jax.random.fold_in(key, 12), *prior.tail_df),
    )


def _student_t(key: jax.Array, df: jax.Array, shape) -> jax.Array:
    """Unit-variance Student-t draws."""
    return jax.random.t(key, df, shape) * jnp.sqrt((df - 2.0) / df)


def generate(key: jax.Array, settings: WorldSettings, n_bars: int) -> WorldBars:
    """The bars of one world with `settings` (traceable; `n_bars` static)."""
    a_max = settings.beta.shape[0]
    mask = jnp.arange(a_max) < settings.n_assets
    n_active = settings.n_assets.astype(jnp.float32)
    k_reg, k_sig, k_mkt, k_idio, k_price, k_ohlc, k_size = jax.random.split(key, 7)
    phi = settings.persistence

    # Regimes: leave the state with probability 1 / duration, to one of the other three.
    k0, k_switch, k_jump = jax.random.split(k_reg, 3)
    switch = jax.random.uniform(k_switch, (n_bars,)) < 1.0 / settings.duration
    jumps = jnp.where(switch, jax.random.randint(k_jump, (n_bars,), 1, N_REGIMES), 0)
    regime = (jax.random.randint(k0, (), 0, N_REGIMES) + jnp.cumsum(jumps.at[0].set(0))
              ) % N_REGIMES

    # The signal: a stationary unit-variance AR(1) per asset, demeaned over the world's
    # assets each bar (so the equal-weight index gets none of it).
    k_start, k_shocks = jax.random.split(k_sig)
    shocks = jnp.sqrt(1.0 - phi**2) * jax.random.normal(k_shocks, (n_bars, a_max))

    def ar1(x, shock):
        x = phi * x + shock
        return x, x

    _, ar = jax.lax.scan(ar1, jax.random.normal(k_start, (a_max,)), shocks)  # stationary
    signal = jnp.where(mask, ar - jnp.sum(jnp.where(mask, ar, 0.0), 1, keepdims=True)
                       / n_active, 0.0)

    market = settings.drift[regime] + settings.vol[regime] * _student_t(
        k_mkt, settings.tail_df, (n_bars,))
    idio = _student_t(k_idio, settings.tail_df, (n_bars, a_max))
    log_ret = (settings.beta * market[:, None]
               + ALPHA_SCALE * settings.signal_strength * signal
               + settings.idio_vol * settings.idio_mult[regime][:, None] * idio)
    log_ret = jnp.where(mask, log_ret.at[0].set(0.0), 0.0)
    start_price = jax.random.uniform(k_price, (a_max,), minval=20.0, maxval=400.0)
    close = jnp.where(mask, start_price * jnp.exp(jnp.cumsum(log_ret, axis=0)), 1.0)

    bar_vol = (settings.idio_vol * settings.idio_mult[regime][:, None]
               + settings.vol[regime][:, None])
    prev_close = jnp.concatenate([close[:1], close[:-1]])
    k_open, k_high, k_low = jax.random.split(k_ohlc, 3)
    shape = (n_bars, a_max)
    open_ = prev_close * jnp.exp(0.2 * bar_vol * jax.random.normal(k_open, shape))
    wick = 0.5 * bar_vol
    high = jnp.maximum(open_, close) * jnp.exp(wick * jnp.abs(jax.random.normal(k_high, shape)))
    low = jnp.minimum(open_, close) * jnp.exp(-wick * jnp.abs(jax.random.normal(k_low, shape)))

    k_level, k_noise = jax.random.split(k_size)
    size_level = jnp.log(2e8) + jax.random.normal(k_level, (a_max,))
    surprise = jnp.abs(log_ret) / bar_vol
    dollar_volume = jnp.exp(size_level + 0.3 * jax.random.normal(k_noise, shape))
    volume = jnp.where(mask, jnp.round(dollar_volume * (0.7 + 0.3 * surprise) / close), 0.0)
    one = lambda x: jnp.where(mask, x, 1.0)  # noqa: E731  (padding: a flat price of 1)
    return WorldBars(open=one(open_), high=one(high), low=one(low), close=close,
                     volume=volume, mask=mask, regime=regime.astype(jnp.int32), signal=signal)


def make_worlds(seed: int, stream: str, indices, n_bars: int,
                prior: WorldPrior = WorldPrior()) -> tuple[WorldSettings, WorldBars]:
    """Settings and bars of worlds `indices` of `stream` (leaves [W, ...]), jitted: one
    program per (number of worlds, n_bars, prior), whatever the seed and stream. A world
    is the same whichever others are made with it, to float32 rounding (XLA may round a
    batch of 6 and a batch of 1 differently in the last bit)."""
    return _make_worlds(jnp.int32(seed), jnp.int32(STREAMS.index(stream)),
                        jnp.asarray(indices, jnp.int32), n_bars, prior)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _make_worlds(seed, stream, indices, n_bars, prior):
    def one(index):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)
        key_settings, key_bars = jax.random.split(key)
        settings = sample_settings(key_settings, prior)
        return settings, generate(key_bars, settings, n_bars)

    return jax.vmap(one)(indices)


# ---------------------------------------------------------------------------
# Features: the jnp twin of `jaxtrade.data.features.compute`.


def _windows(x: jax.Array, n: int) -> jax.Array:
    """[n, T, ...]: x shifted back by 0 .. n-1 bars (row t of shift j is x[t - j]; rows
    before the start repeat x[0] and are incomplete, as the caller knows)."""
    padded = jnp.concatenate([jnp.repeat(x[:1], n - 1, axis=0), x])
    t = x.shape[0]
    return jnp.stack([padded[n - 1 - j: n - 1 - j + t] for j in range(n)])


def _lag(x: jax.Array, n: int) -> jax.Array:
    return jnp.concatenate([jnp.repeat(x[:1], n, axis=0), x[:-n]])


def features(bars: WorldBars) -> tuple[jax.Array, jax.Array]:
    """Raw features [T, A, F] and factor scores [T, A, 4] of a world's bars, as
    `jaxtrade.data.features.compute` defines them (float32; rows < WINDOW are NaN, and
    padded assets 0). Windows are exact sums over 20 stacked shifts, not running sums,
    so no cancellation grows with the length of the series."""
    w = feats.WINDOW
    eps = 1e-8
    # log(p_t / p_{t-n}) as the log of a ratio near 1: exact to float32 rounding of the
    # ratio, where a difference of two logs of prices near 100 would lose 3 digits.
    change = lambda n: jnp.log(bars.close / _lag(bars.close, n))  # noqa: E731
    r1, ret_5, ret_20 = change(1), change(5), change(w)

    def mean_std(x):
        win = _windows(x, w)
        mean = win.mean(0)
        return mean, jnp.sqrt(jnp.sum((win - mean) ** 2, 0) / (w - 1))

    price_mean, _ = mean_std(bars.close)
    mom_20 = bars.close / price_mean - 1.0
    r_mean, vol_20 = mean_std(r1)
    sharpe_20 = r_mean / (vol_20 + eps)
    size = jnp.log1p(_windows(bars.close * bars.volume, w).mean(0))
    log_v = jnp.log1p(bars.volume)
    v_mean, v_std = mean_std(log_v)
    volume_z = (log_v - v_mean) / (v_std + eps)
    hl_range = (bars.high - bars.low) / bars.close
    columns = (r1, ret_5, ret_20, mom_20, vol_20, sharpe_20, size, volume_z, hl_range)
    out = jnp.stack(columns, axis=-1)
    scores = jnp.stack([ret_20, -vol_20, sharpe_20, -size], axis=-1)
    complete = (jnp.arange(out.shape[0]) >= w)[:, None, None]
    keep = lambda x: jnp.where(complete, jnp.where(bars.mask[None, :, None], x, 0.0),  # noqa: E731
                               jnp.nan)
    return keep(out), keep(scores)


def fit_stats(raw: jax.Array, mask: jax.Array) -> feats.FeatureStats:
    """Per-feature mean and std of raw features [W, T, A, F] (complete rows only) over the
    assets that exist (`mask` [W, A]), pooled over worlds, bars and assets: a training
    pool's normalisation, as `jaxtrade.data.features.fit_stats` is a market's."""
    weight = jnp.broadcast_to(mask[:, None, :, None], raw.shape).astype(jnp.float32)
    x = jnp.where(weight > 0, raw, 0.0)
    n = weight.sum((0, 1, 2))
    mean = x.sum((0, 1, 2)) / n
    var = (jnp.where(weight > 0, (raw - mean) ** 2, 0.0)).sum((0, 1, 2)) / n
    std = np.sqrt(np.asarray(var, np.float64))
    return feats.FeatureStats(mean=np.asarray(mean, np.float64),
                              std=np.where(std > 1e-8, std, 1.0))


def pool_market(seed: int, stream: str, indices, n_bars: int,
                prior: WorldPrior = WorldPrior(), stats: feats.FeatureStats | None = None):
    """A pool of worlds as one `Market` the portfolio env trains on: worlds `indices` of
    `stream`, each `n_bars` bars generated and featurised on device, its first
    `features.WINDOW` (incomplete) bars dropped, laid end to end (`Market.world_bars` bars
    each) with their assets padded to `prior.max_assets` (`MarketData.asset_mask`).

    Features are normalised with `stats`, or with statistics fitted on this pool when None
    (a training pool; validation and test pools take the training pool's). The market has
    one range, train, and made-up business-day dates: its worlds are the split.

    Returns:
      (market, settings): the `Market` and each world's `WorldSettings` (leaves [W, ...]).
    """
    from jaxtrade.data.market import Market, MarketData

    w = feats.WINDOW
    if n_bars <= w + 2:
        raise ValueError(f"a world needs more than {w + 2} bars, got {n_bars}")
    settings, bars = make_worlds(seed, stream, indices, n_bars, prior)
    raw, scores = _featurise(bars)
    raw, scores = raw[:, w:], scores[:, w:]
    if stats is None:
        stats = fit_stats(raw, bars.mask)
    # Host arrays, as a market's are: a program places them where it needs them (the
    # trainer replicates them on its mesh), so no stray copy stays on the first device.
    data = jax.device_get(_pool_data(raw, scores, bars.close[:, w:], bars.mask,
                                     jnp.asarray(stats.mean, jnp.float32),
                                     jnp.asarray(stats.std, jnp.float32)))
    n_worlds, world_bars = raw.shape[0], n_bars - w
    del raw, scores, bars
    dates = pd.date_range("2000-01-03", periods=n_worlds * world_bars, freq="B")
    market = Market(
        data=MarketData(**data), dates=dates,
        symbols=tuple(f"A{i:02d}" for i in range(prior.max_assets)),
        val_start=len(dates), test_start=len(dates), stats=stats, bars_per_year=252.0,
        source=f"worlds(seed={seed}, stream={stream}, {n_worlds} x {world_bars} bars)",
        report=(f"generated {n_worlds} {stream} worlds of {world_bars} bars, "
                f"{prior.n_assets[0]}-{prior.n_assets[1]} assets",),
        world_bars=world_bars)
    return market, settings


def settings_of(seed: int, stream: str, indices, prior: WorldPrior = WorldPrior()) -> WorldSettings:
    """The settings of worlds `indices` of `stream` (leaves [W, ...]) as `make_worlds` draws
    them, without generating their bars (market.json records the test worlds' settings
    without a training run ever generating them)."""
    return _settings_of(jnp.int32(seed), jnp.int32(STREAMS.index(stream)),
                        jnp.asarray(indices, jnp.int32), prior)


@functools.partial(jax.jit, static_argnums=(3,))
def _settings_of(seed, stream, indices, prior):
    def one(index):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)
        return sample_settings(jax.random.split(key)[0], prior)

    return jax.vmap(one)(indices)


WORLDS_FORMAT = 1  # layout of the "worlds" entry of market.json


@dataclasses.dataclass(frozen=True)
class RunWorlds:
    """The procedural worlds of one run (`--market worlds`): training pools, validation
    worlds and test worlds from the three disjoint streams of `seed`.

    Training pool generation g holds train worlds g * n_worlds .. (g + 1) * n_worlds - 1:
    with `refresh_every` K, iteration i trains on generation i // K (a resumed run finds
    its pool from the iteration alone), and no world is ever trained on again once its
    generation is over. Every pool is normalised with the statistics of generation 0
    (the network learned with them). Validation worlds 0 .. val_worlds - 1 and test worlds
    0 .. test_worlds - 1 are fixed for the run; training never generates a test world.
    """

    seed: int
    n_worlds: int
    n_bars: int  # generated per world; the first features.WINDOW warm the features
    val_worlds: int
    test_worlds: int
    refresh_every: int = 0
    prior: WorldPrior = WorldPrior()

    def generation(self, iteration: int) -> int:
        """The training pool iteration `iteration` (0-based, the next to run) trains on."""
        return iteration // self.refresh_every if self.refresh_every else 0

    def train_indices(self, generation: int) -> np.ndarray:
        return np.arange(generation * self.n_worlds, (generation + 1) * self.n_worlds)

    def pool(self, stream: str, generation: int = 0, stats=None):
        """(Market, settings) of the training pool `generation`, or of the validation or
        test worlds (`pool_market`; `stats`: the run's normalisation, None to fit it)."""
        if stream == "train":
            indices = self.train_indices(generation)
        else:
            indices = np.arange(self.val_worlds if stream == "validation" else self.test_worlds)
        return pool_market(self.seed, stream, indices, self.n_bars, self.prior, stats)

    def world_bytes(self) -> int:
        """Device bytes of one world in a pool (features, scores, price, mask)."""
        per_bar_asset = (len(feats.FEATURE_NAMES) + len(feats.SCORE_NAMES) + 1) * 4 + 1
        return (self.n_bars - feats.WINDOW) * self.prior.max_assets * per_bar_asset

    def record(self) -> dict:
        """market.json's "worlds" entry: how to rebuild every world of the run (seed, bars,
        prior), and the settings of each validation and test world."""
        def stream(name: str, n: int) -> dict:
            return {"worlds": n, "settings": describe(settings_of(self.seed, name, range(n),
                                                                  self.prior))}

        return {
            "format": WORLDS_FORMAT,
            "seed": self.seed,
            "bars_per_world": self.n_bars,
            "prior": dataclasses.asdict(self.prior),
            "train": {"worlds": self.n_worlds, "refresh_every": self.refresh_every,
                      "indices": "generation g: g * worlds .. (g + 1) * worlds - 1"},
            "validation": stream("validation", self.val_worlds),
            "test": stream("test", self.test_worlds),
        }

    @classmethod
    def from_record(cls, record: dict) -> RunWorlds:
        prior = {k: tuple(v) if isinstance(v, list) else v for k, v in record["prior"].items()}
        return cls(seed=record["seed"], n_worlds=record["train"]["worlds"],
                   n_bars=record["bars_per_world"], val_worlds=record["validation"]["worlds"],
                   test_worlds=record["test"]["worlds"],
                   refresh_every=record["train"]["refresh_every"], prior=WorldPrior(**prior))


@jax.jit
def _featurise(bars: WorldBars) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(features)(bars)


@jax.jit
def _pool_data(raw, scores, price, mask, mean, std) -> dict:
    """MarketData fields of worlds [W, T, ...] laid end to end ([W * T, ...]); padded
    assets have zero features and scores."""
    exists = mask[:, None, :, None]
    normalised = jnp.clip((raw - mean) / std, -feats.CLIP, feats.CLIP)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return {
        "features": flat(jnp.where(exists, normalised, 0.0).astype(jnp.float32)),
        "scores": flat(jnp.where(exists, scores, 0.0).astype(jnp.float32)),
        "price": flat(price.astype(jnp.float32)),
        "asset_mask": flat(jnp.broadcast_to(mask[:, None, :], price.shape)),
    }


def to_panel(bars: WorldBars, world: int = 0, start: str = "2010-01-04",
             freq: str = "B") -> Panel:
    """World `world` of `bars` (leaves [W, ...]) as a host-side `Panel` of its own assets
    (float64), e.g. for `jaxtrade.data.features.compute` or a CSV a user can look at."""
    b = jax.tree.map(lambda x: np.asarray(x[world]), jax.device_get(bars))
    keep = np.flatnonzero(b.mask)
    cols = {name: getattr(b, name)[:, keep].astype(np.float64)
            for name in ("open", "high", "low", "close", "volume")}
    dates = pd.date_range(start, periods=b.close.shape[0], freq=freq)
    return Panel(dates=dates, symbols=tuple(f"W{i:02d}" for i in range(len(keep))),
                 adj_close=cols["close"].copy(), source=f"world {world}", report=(), **cols)


def describe(settings: WorldSettings) -> list[dict]:
    """JSON-ready settings of each world of `settings` (leaves [W, ...]), per-asset arrays
    cut to the world's assets; for market.json and the worlds command."""
    s = jax.device_get(settings)
    out = []
    for w in range(np.asarray(s.n_assets).shape[0]):
        n = int(s.n_assets[w])
        out.append({
            "n_assets": n,
            **{name: {regime: round(float(v), 6)
                      for regime, v in zip(REGIME_NAMES, getattr(s, name)[w], strict=True)}
               for name in ("drift", "vol", "idio_mult")},
            "duration": round(float(s.duration[w]), 2),
            "signal_strength": round(float(s.signal_strength[w]), 4),
            "persistence": round(float(s.persistence[w]), 5),
            "beta": [round(float(b), 4) for b in s.beta[w][:n]],
            "idio_vol": [round(float(v), 5) for v in s.idio_vol[w][:n]],
            "tail_df": round(float(s.tail_df[w]), 3),
        })
    return out


# ---------------------------------------------------------------------------
# `python -m jaxtrade.worlds`: look at what an agent trains on.

REGIME_COLORS = ("#2ca02c", "#d62728", "#ff7f0e", "#1f77b4")  # bull, bear, high_vol, low_vol


def plot(bars: WorldBars, settings: WorldSettings, path: str, title: str = "",
         indices=None) -> None:
    """A PNG with one row per world: log prices of its assets over the regimes (shaded),
    and the latent signal a[t, i] of three of its assets; `indices` label the worlds
    (default 0, 1, ...); host-only, Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    b = jax.device_get(bars)
    info = describe(settings)
    n = len(info)
    indices = list(range(n)) if indices is None else list(indices)
    fig = Figure(figsize=(14, 2.6 * n + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 2, squeeze=False, gridspec_kw={"width_ratios": (3, 1)})
    for w, (ax_p, ax_s) in enumerate(axes):
        keep = np.flatnonzero(np.asarray(b.mask[w]))
        regime = np.asarray(b.regime[w])
        t = np.arange(regime.shape[0])
        starts = np.flatnonzero(np.diff(regime, prepend=-1))
        for i, s0 in enumerate(starts):
            s1 = starts[i + 1] if i + 1 < len(starts) else len(t)
            ax_p.axvspan(s0, s1, color=REGIME_COLORS[regime[s0]], alpha=0.12, lw=0)
        close = np.asarray(b.close[w])[:, keep]
        ax_p.plot(t, np.log(close / close[0]), lw=0.6)
        ax_p.set_ylabel("log price / first")
        s = info[w]
        ax_p.set_title(
            f"world {indices[w]}: {s['n_assets']} assets, regime duration "
            f"{s['duration']:.0f} bars, "
            f"signal strength {s['signal_strength']:.2f} (persistence {s['persistence']:.3f}), "
            f"tails df {s['tail_df']:.1f}", fontsize=9, loc="left")
        ax_s.plot(t, np.asarray(b.signal[w])[:, keep[:3]], lw=0.5)
        ax_s.set_title("latent signal a[t, i] of 3 assets" + (" (unused: strength 0)"
                                                 if s["signal_strength"] == 0 else ""),
                       fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("bar")
    handles = [Patch(color=c, alpha=0.3, label=r) for c, r in zip(REGIME_COLORS, REGIME_NAMES,
                                                                   strict=True)]
    fig.legend(handles=handles, loc="upper right", ncols=4, fontsize=9)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m jaxtrade.worlds", allow_abbrev=False,
        description="Sample procedural worlds and show their settings and bars.")
    parser.add_argument("--seed", type=int, default=0, help="run seed of the worlds [0]")
    parser.add_argument("--stream", choices=STREAMS, default="train",
                        help="seed stream [train]")
    parser.add_argument("--worlds", type=int, default=4, help="worlds to sample [4]")
    parser.add_argument("--first", type=int, default=0, help="index of the first world [0]")
    parser.add_argument("--bars", type=int, default=2520, help="bars per world [2520]")
    parser.add_argument("--plot", metavar="PNG", help="write a plot of the worlds here")
    parser.add_argument("--json", action="store_true", help="print the settings as JSON")
    args = parser.parse_args(argv)
    if args.worlds < 1 or args.bars < 2 or args.first < 0:
        parser.error("--worlds >= 1, --bars >= 2 and --first >= 0, please")
    indices = range(args.first, args.first + args.worlds)
    settings, bars = make_worlds(args.seed, args.stream, indices, args.bars)
    info = describe(settings)
    if args.json:
        print(json.dumps([{"stream": args.stream, "index": i, **s}
                          for i, s in zip(indices, info, strict=True)], indent=1))
    else:
        close = np.asarray(bars.close)
        print(f"{args.stream} worlds {args.first}..{indices[-1]} of seed {args.seed}, "
              f"{args.bars} bars each")
        print(f"{'world':>5} {'assets':>6} {'duration':>8} {'signal':>6} {'persist':>7} "
              f"{'df':>5} {'bull/bear/hv/lv share of bars':>30} {'equal-weight return':>20}")
        for j, (i, s) in enumerate(zip(indices, info, strict=True)):
            keep = np.asarray(bars.mask[j])
            share = np.bincount(np.asarray(bars.regime[j]), minlength=N_REGIMES) / args.bars
            growth = np.mean(close[j, -1, keep] / close[j, 0, keep]) - 1
            print(f"{i:>5} {s['n_assets']:>6} {s['duration']:>8.0f} "
                  f"{s['signal_strength']:>6.2f} {s['persistence']:>7.3f} {s['tail_df']:>5.1f} "
                  f"{' / '.join(f'{x:.2f}' for x in share):>30} {100 * growth:>19.1f}%")
    if args.plot:
        plot(bars, settings, args.plot,
             f"jaxtrade procedural worlds: {args.stream} stream, seed {args.seed}", indices)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
