"""A trained policy for deployment: recent bars in, the regime and target weights for the next
bar out (host-side orchestration around one jitted program per history length).

    from jaxtrade import load_policy

    policy = load_policy("ckpt/my-run")              # the best checkpoint
    decision = policy(bars)                          # bars: long-format DataFrame
    decision = policy(bars, window=60)               # only the last 60 aligned bars of them
    decision.regime, decision.weights                # 'MOMENTUM', {'AAPL': 0.5, ..., 'CASH': 0.0}

How a decision is made, so that it equals what evaluation would do on the same bars
(`jaxtrade.evaluation`):

* The bars are loaded like a data file (`jaxtrade.data.loader.load_frame`: same
  columns, aliases and checks), their features computed as in training and scaled
  with the training run's statistics (RUN_DIR/market.json). With `window=N` only the
  last N bars of the loaded, aligned panel are used, exactly as if only they had been
  given, so a whole file can be passed whatever its date column is called.
* The policy walks the given history greedily as one continuous pass, from all cash
  at the first bar with a complete feature window (bar 21 of those given) through
  the last bar, with the run's frictions and the evaluation key of the run's seed.
  That warms up the GRU state and produces the holdings, value and drawdown the
  policy itself would have now. The decision is the next step of that pass: the
  regime for the bar after the last one given, decided from the last bar's
  features, traded at the next bar's price.
* `current_weights` (optional) replaces the holdings the policy would have with
  yours for the decision itself (its weights input, and what HOLD keeps); the
  history walk, and so the GRU state and drawdown input, stay the policy's own.

Each distinct number of bars compiles the walk once (a few seconds); keep the
window length fixed (e.g. always `window=60`) to reuse it.

The network is the one the run's config names, built for the observation width and action
count the run recorded in RUN_DIR/env.json (for a run older than env.json: those of the
portfolio env on the recorded assets), whatever its parameters are called; the saved
parameters must fit it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxtrade import checkpoint as ckpt
from jaxtrade.config import Config
from jaxtrade.data import SyntheticConfig, synthetic_panel
from jaxtrade.data import features as feats
from jaxtrade.data.loader import load_frame
from jaxtrade.data.market import MARKET_FILE, MARKET_FORMAT, Market, build_market
from jaxtrade.data.panel import FIELDS, Panel, format_date
from jaxtrade.envs import NAMES, PortfolioEnv, regimes
from jaxtrade.envs.funding import FundingEnv
from jaxtrade.evaluation import EvaluationError, make_policy_walk, pass_params, walk_key
from jaxtrade.networks import ObsLayout, make_network, param_shapes
from jaxtrade.rows import ENV_FILE

if TYPE_CHECKING:
    from jaxtrade.funding_policy import FundingPolicy
    from jaxtrade.specialists import SpecialistPolicy

CASH = "CASH"  # the cash entry of weight dicts


def read_env_record(run_dir: str | Path) -> tuple[int, int, ObsLayout | None] | None:
    """(obs_dim, n_actions, obs_layout) of RUN_DIR/env.json; None if the run has none (it
    predates env.json). The layout is None for a run that recorded none (flat encoder).

    Raises:
      EvaluationError: an env.json without whole-number obs_dim and num_actions, or with a
        malformed obs_layout.
    """
    path = Path(run_dir) / ENV_FILE
    if not path.exists():
        return None
    try:
        env_record = json.loads(path.read_text())
        dims = env_record["obs_dim"], env_record["num_actions"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise TypeError(f"obs_dim and num_actions must be whole numbers > 0, got {dims}")
        layout = env_record.get("obs_layout")
        if layout is not None:
            mask_token = layout.get("mask_token")
            layout = ObsLayout(int(layout["n_assets"]), tuple(map(int, layout["blocks"])),
                               int(layout["n_globals"]),
                               None if mask_token is None else int(mask_token))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EvaluationError(f"{path}: not a jaxtrade env record ({e})") from None
    return *dims, layout


def check_params_fit(source: ckpt.Source, params: Any, network, obs_dim: int,
                     n_actions: int) -> None:
    """Raise unless the saved `params` have the shapes of `network`'s (built for obs_dim and
    n_actions).

    Raises:
      CheckpointError: the first parameter whose shape differs (or that one side lacks).
    """
    mismatch = ckpt.first_shape_mismatch(ckpt.leaf_shapes(params),
                                         ckpt.leaf_shapes(param_shapes(network)))
    if mismatch is not None:
        where, saved, built = ("absent" if x is None else x for x in mismatch)
        raise ckpt.CheckpointError(
            f"{source.path}: the saved parameters do not fit the run's "
            f"{source.model_config.network.kind} network for obs {obs_dim} and {n_actions} "
            f"actions: params/{where} is {saved} saved but {built} built"
        )


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the policy does on the bar after `as_of`."""

    as_of: pd.Timestamp  # the last bar given; the trade is for the bar after it
    regime: str  # chosen regime (`jaxtrade.envs.regimes`), the most probable one
    regime_index: int  # its index in `jaxtrade.envs.NAMES`
    probabilities: dict[str, float]  # regime name -> probability (sums to 1)
    weights: dict[str, float]  # target weights: symbol -> weight, and CASH (sum to 1)
    held: dict[str, float]  # the weights the decision started from (the policy's own, or yours)

    def __str__(self) -> str:
        target = ", ".join(f"{k} {v:.3f}" for k, v in self.weights.items() if v > 0)
        return (f"after {format_date(self.as_of)}: {self.regime} "
                f"(p={self.probabilities[self.regime]:.2f}) -> {target}")


def _read_record(run_dir: Path) -> dict:
    path = run_dir / MARKET_FILE
    try:
        record = json.loads(path.read_text())
        feats.FeatureStats.from_dict(record["stats"])
    except FileNotFoundError:
        raise EvaluationError(
            f"{path}: not found; runs write it at training start (normalisation statistics, "
            f"symbols, date ranges), so this run predates it: train it again"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluationError(f"{path}: not a jaxtrade market record ({e})") from None
    if record.get("format", 0) > MARKET_FORMAT:
        raise EvaluationError(f"{path}: written by a newer jaxtrade; upgrade jaxtrade")
    return record


class Policy:
    """A trained policy and what it needs to read new data (load with `load_policy`)."""

    def __init__(self, run_dir: str | os.PathLike, source: ckpt.Source, params: Any,
                 record: Mapping[str, Any], seed: int | None = None):
        self.run_dir = Path(run_dir)
        self.checkpoint = source  # the checkpoint the weights come from
        self.config: Config = source.model_config  # the run's (frictions, network)
        self.params = params
        self.record = dict(record)  # RUN_DIR/market.json
        self.symbols: tuple[str, ...] = tuple(record["symbols"])  # trained on, in column order
        self.stats = feats.FeatureStats.from_dict(record["stats"])
        self.seed = self.config.run.seed if seed is None else seed  # evaluation key seed
        if self.config.env.name != PortfolioEnv.name:
            raise EvaluationError(
                f"{source.path}: trained on env {self.config.env.name!r}; a policy decides "
                f"the {PortfolioEnv.name} env's regimes, so it loads {PortfolioEnv.name} runs only"
            )
        self.layout = None  # the recorded one, below (a stand-in market reads none)
        obs_dim, n_actions, layout = self._trained_dims()
        # The set encoder reads any number of assets, in any order (its blocks are per asset).
        self.any_assets = self.config.network.encoder == "set" and layout is not None
        self.layout = layout
        self.network = make_network(self.config.network, obs_dim, n_actions, layout=layout)
        self.n_actions = n_actions
        check_params_fit(source, params, self.network, obs_dim, n_actions)
        self._programs: dict[tuple[int, int], Any] = {}
        self._networks: dict[int, Any] = {layout.n_assets if layout else self.n_assets:
                                          self.network}

    def _trained_dims(self) -> tuple[int, int, ObsLayout | None]:
        """(obs_dim, n_actions, obs_layout) the run trained with: RUN_DIR/env.json's (a
        run from before env.json recorded a layout used the flat encoder, which needs none);
        for a run older than env.json (which trained the portfolio env), the portfolio
        env's on a stand-in market of the recorded assets and features (its width depends
        on nothing else).

        Raises:
          EvaluationError: an env.json without whole-number obs_dim and num_actions, or
            with a malformed obs_layout.
        """
        if (record := read_env_record(self.run_dir)) is None:
            bars = feats.WINDOW + 3  # the feature window and a one-step episode
            stand_in = synthetic_panel(SyntheticConfig(n_assets=self.n_assets, n_bars=bars))
            env = PortfolioEnv(self.market(stand_in))
            return env.obs_dim, env.num_actions, env.obs_layout
        return record

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    def network_for(self, n_assets: int):
        """The network that reads a market of `n_assets` assets with these parameters: the
        trained one, or for a set encoder (`any_assets`) the same blocks over another
        number of assets.

        Raises:
          EvaluationError: another asset count for a model that reads a fixed one.
        """
        if n_assets not in self._networks:
            if not self.any_assets:
                raise EvaluationError(
                    f"the model was trained on {self.n_assets} assets with the "
                    f"{self.config.network.encoder} encoder, which reads that many only; "
                    f"give it data with {self.n_assets} assets (the set encoder reads any)")
            layout = dataclasses.replace(self.layout, n_assets=n_assets)
            self._networks[n_assets] = make_network(self.config.network, layout.obs_dim,
                                                    self.n_actions, layout=layout)
        return self._networks[n_assets]

    def __repr__(self) -> str:
        return (f"Policy({str(self.checkpoint.path)!r}, {self.n_assets} assets: "
                f"{', '.join(self.symbols)})")

    # ------------------------------------------------------------------------- data
    def choose_symbols(self, available: list[str] | tuple[str, ...], source: str) -> list | None:
        """The symbols of a data set to use, in model column order: the trained ones when the
        data holds them all (extra ones are left out); else all of them (None), when their
        count is the trained count (new assets take the columns in sorted order).

        Raises:
          EvaluationError: the counts differ, naming both.
        """
        if set(self.symbols) <= set(available):
            return list(self.symbols)
        if len(available) == self.n_assets or self.any_assets:
            return None
        raise EvaluationError(
            f"{source}: the model was trained on {self.n_assets} assets "
            f"({', '.join(self.symbols)}) but the data has {len(available)} "
            f"({', '.join(available)}); give it data with {self.n_assets} assets"
        )

    def market(self, panel: Panel) -> Market:
        """`panel` as a market scaled with the training statistics (no split); for a model
        that read which assets exist (trained on worlds), every asset of `panel` exists."""
        return self.observed(build_market(panel, stats=self.stats, episode_length=1,
                                          val_fraction=0.0, test_fraction=0.0))

    def observed(self, market: Market) -> Market:
        """`market` as this policy reads it: a model that read which assets exist (trained
        on worlds) sees every asset of a fixed market as existing."""
        if self.layout is not None and self.layout.mask_token is not None:
            return market.with_all_assets()
        return market

    def panel(self, bars: pd.DataFrame, window: int | None = None) -> Panel:
        """The aligned panel a decision on `bars` reads: loaded as a data file, the model's
        symbols chosen (`choose_symbols`), its last `window` bars (see `__call__`).

        Raises:
          DataError: bad bars. EvaluationError: wrong asset count, too few bars, a bad window.
        """
        need = feats.WINDOW + 1
        if window is not None and (isinstance(window, bool)
                                   or not isinstance(window, int | np.integer) or window < need):
            raise EvaluationError(
                f"window={window!r}: expected a whole number of bars >= {need} (the "
                f"{feats.WINDOW}-bar feature window + 1), or None for all the bars given"
            )
        panel = load_frame(bars, max_fill=self.config.data.max_fill)
        chosen = self.choose_symbols(panel.symbols, "bars")
        if chosen is not None and list(panel.symbols) != chosen:
            panel = load_frame(bars, symbols=chosen, max_fill=self.config.data.max_fill)
        if window is not None:
            if panel.n_bars < window:
                raise EvaluationError(
                    f"bars: {panel.n_bars} aligned bars is fewer than window={window}; give "
                    f"more bars or a smaller window"
                )
            panel = panel.slice(panel.n_bars - window, panel.n_bars)
        if panel.n_bars < need:
            raise EvaluationError(
                f"bars: {panel.n_bars} aligned bars is too few: the {feats.WINDOW}-bar feature "
                f"window + 1 needs at least {need} (more give the GRU a longer warm-up)"
            )
        return panel

    # -------------------------------------------------------------------- decisions
    def __call__(self, bars: pd.DataFrame,
                 current_weights: Mapping[str, float] | None = None,
                 window: int | None = None) -> Decision:
        """The decision for the bar after the last of `bars` (see the module docstring).

        Args:
          bars: long-format bars (date, symbol, open, high, low, close, volume[, adj
            close]) of the assets, at least `feats.WINDOW + 1` bars each, oldest first
            or not (they are sorted).
          current_weights: symbol -> weight (and CASH), summing to 1; None = the
            weights the policy itself would hold after walking `bars`.
          window: use only the last `window` bars of the loaded, aligned `bars` (at
            least `feats.WINDOW + 1`; `bars` must hold that many); None = all of them.

        Raises:
          DataError: bad bars (one line, as the loader's).
          EvaluationError: wrong asset count, too few bars, a bad window, bad
            current_weights.
        """
        panel = self.panel(bars, window)
        held = None if current_weights is None else self._weights_array(current_weights, panel)
        # Two flat bars after the last: the pass's last real step (trading at the last bar)
        # is marked on them, and the decision that follows reads nothing of them.
        market = self.market(_pad(panel, 2))
        n = market.n_bars - 2  # bars with features; the decision is for bar n
        env = PortfolioEnv(market)
        env_params = pass_params(env, self.config.env, 1, n + 1)
        program = self._program(env, n - 1)
        action, probs, target, start = jax.device_get(program(
            self.params, env_params, walk_key(self.seed),
            jnp.zeros(len(panel.symbols) + 1, jnp.float32) if held is None else held,
            jnp.asarray(held is not None),
        ))
        names = [*panel.symbols, CASH]
        return Decision(
            as_of=panel.dates[-1],
            regime=NAMES[int(action)],
            regime_index=int(action),
            probabilities={name: float(p) for name, p in zip(NAMES, probs, strict=True)},
            weights={k: float(v) for k, v in zip(names, target, strict=True)},
            held={k: float(v) for k, v in zip(names, start, strict=True)},
        )

    decide = __call__

    def _weights_array(self, weights: Mapping[str, float], panel: Panel) -> jax.Array:
        names = [*panel.symbols, CASH]
        unknown = sorted(set(weights) - set(names))
        values = np.array([float(weights.get(k, 0.0)) for k in names])
        if unknown:
            raise EvaluationError(f"current_weights: unknown key(s) {', '.join(unknown)}; "
                                  f"expected {', '.join(names)}")
        if (values < 0).any() or abs(values.sum() - 1.0) > 1e-3:
            raise EvaluationError(f"current_weights must be >= 0 and sum to 1 (long-only, cash "
                                  f"included), got a sum of {values.sum():.6g}")
        return jnp.asarray(values / values.sum(), jnp.float32)

    def _program(self, env: PortfolioEnv, n_steps: int):
        """jit: the pass of `n_steps` steps, then the decision; one per history length."""
        if (n_steps, env.n_assets) not in self._programs:
            network = self.network_for(env.n_assets)
            walk = make_policy_walk(network, env, n_steps)

            def decide(params, env_params, key, weights, use_weights):
                carry, _ = walk(params, env_params, key)
                state = carry.env_state  # leaves [1, ...], at bar t = n
                held = jnp.where(use_weights, weights[None], state.weights)
                state = state.replace(weights=held)
                obs = jax.vmap(env.get_obs, in_axes=(0, None))(state, env_params)
                logits = network.apply({"params": params}, carry.hidden, obs, carry.reset).logits
                action = jnp.argmax(logits[0]).astype(jnp.int32)
                scores = env_params.market.scores[state.t[0] - 1]
                target = regimes.target_weights(action, scores, held[0])
                return action, jax.nn.softmax(logits[0]), target, held[0]

            self._programs[n_steps, env.n_assets] = jax.jit(decide)
        return self._programs[n_steps, env.n_assets]


def _pad(panel: Panel, k: int) -> Panel:
    """`panel` with `k` copies of its last bar appended (flat prices), one bar interval apart."""
    step = panel.dates[-1] - panel.dates[-2] if panel.n_bars > 1 else pd.Timedelta(days=1)
    dates = panel.dates.append(pd.DatetimeIndex([panel.dates[-1] + step * (i + 1)
                                                 for i in range(k)]))
    grow = {name: np.concatenate([getattr(panel, name), np.repeat(getattr(panel, name)[-1:], k,
                                                                  axis=0)])
            for name in FIELDS}
    return dataclasses.replace(panel, dates=dates, **grow)


def load_policy(run_dir: str | os.PathLike, checkpoint: str | int = "best",
                seed: int | None = None) -> Policy | FundingPolicy | SpecialistPolicy:
    """The policy of a training run, ready to decide on new bars (see the module docstring);
    for a run of the funding env, a `jaxtrade.funding_policy.FundingPolicy` (today's
    opportunity table, your positions, account and trading config in).

    Args:
      run_dir: the run directory (`python -m jaxtrade.train --run-dir`), or an archived
        model: "archive:ID" (in ckpt/archive) or "archive:DIR:ID" (`jaxtrade.archive`;
        its one checkpoint, whatever `checkpoint` says), or "league:LEAGUE_DIR": the
        regime specialists of that league's last `--regime-specialists` round, routed by
        the market regime of the bars given (`jaxtrade.specialists.SpecialistPolicy`).
      checkpoint: "best" (by val_score when the run walked its validation range, else
        by episode return), "latest", or an iteration number.
      seed: key of the pass's slippage draws; default the run's seed, as evaluation.

    Raises:
      CheckpointError: no such run or checkpoint; EvaluationError: no RUN_DIR/market.json
        (a portfolio run), or a league without regime specialists; ArchiveError: no such
        archive or archived model.
    """
    if str(run_dir).startswith("archive:"):
        from jaxtrade import archive

        return archive.load_policy(str(run_dir), seed=seed)
    if str(run_dir).startswith("league:"):
        from jaxtrade import specialists

        return specialists.load(str(run_dir)[len("league:"):], seed=seed)
    run_dir = Path(run_dir)
    source = ckpt.select(run_dir, checkpoint)
    if source.config.env.name == FundingEnv.name:
        from jaxtrade.funding_policy import FundingPolicy

        return FundingPolicy(run_dir, source, ckpt.read_params(source), seed)
    record = _read_record(run_dir)
    return Policy(run_dir, source, ckpt.read_params(source), record, seed)
