"""Planning a run before anything is placed: n_envs sized to memory, the evaluation
cadence (`jaxtrade.engine.start`). Resume planning is exercised through the CLI in
tests/test_resume_cli.py and tests/test_checkpoint.py."""

import pytest

from jaxtrade import engine
from jaxtrade.config import Config, with_values
from jaxtrade.errors import UsageError


def test_memory_budget_caps_n_envs_or_refuses(small_market):
    """An asked-for n_envs over the budget is capped with a warning naming the estimate; a
    default one is lowered with a note; a resumed one cannot change and only warns; a
    budget too small for any n_envs is refused."""
    from jaxtrade import config as C
    from jaxtrade import memory
    from jaxtrade.envs import PortfolioEnv

    env = PortfolioEnv(small_market)
    cfg = C.resolve(C.with_values(C.Config(), hidden_dim=8, n_gru_layers=1, n_envs=4096,
                                  n_steps=8, n_minibatches=2), "cpu")
    need = memory.estimate(cfg, env).per_device_bytes
    gb = need / 4 / 1e9  # a quarter of what 4,096 envs need
    asked = engine.size_n_envs(cfg, env, 1, gb, given=True, fixed=False)
    n = asked.cfg.ppo.n_envs
    assert 0 < n < 4096 and n % 2 == 0 and asked.estimate.per_device_bytes <= gb * 1e9
    assert memory.estimate(C.with_values(cfg, n_envs=n + 2), env).per_device_bytes > gb * 1e9
    assert asked.warning.startswith("n_envs=4,096 needs an estimated ")
    assert f"capped to {n:,} envs" in asked.warning and asked.note is None
    default = engine.size_n_envs(cfg, env, 1, gb, given=False, fixed=False)
    assert default.cfg.ppo.n_envs == n and default.warning is None
    assert default.note.startswith("default n_envs=4,096 lowered to")
    resumed = engine.size_n_envs(cfg, env, 1, gb, given=True, fixed=True)
    assert resumed.cfg.ppo.n_envs == 4096 and "the checkpoint fixes n_envs" in resumed.warning
    fits = engine.size_n_envs(cfg, env, 1, 4 * need / 1e9, given=True, fixed=False)
    assert fits.cfg is cfg and fits.warning is None and fits.note is None
    with pytest.raises(UsageError, match="not even n_envs=2 fits"):
        engine.size_n_envs(cfg, env, 1, 1e-6, given=True, fixed=False)
    # A population's 4 members per device: each member sized to a quarter of the budget
    # 4x that of the first run, so the same n_envs, and the budget line says why.
    shared = engine.size_n_envs(cfg, env, 1, 4 * gb, given=True, fixed=False, share=4)
    assert shared.cfg.ppo.n_envs == n and abs(shared.budget - asked.budget) <= 4
    assert shared.budget_source.endswith("a 1/4 share: 4 members per device")
    whole = engine.size_n_envs(cfg, env, 1, 4 * gb, given=True, fixed=False)
    assert whole.cfg.ppo.n_envs > n


class _Env:
    """The part of an env `engine.eval_interval` reads."""

    def __init__(self, reason=None):
        self.reason = reason

    def validation_unavailable(self):
        return self.reason


def test_eval_every_needs_something_to_validate_on():
    cfg = with_values(Config(), val_fraction=0.0)
    none = _Env("this run has none")
    assert engine.eval_interval(cfg, none, given=False) == 0  # the default: off
    assert engine.eval_interval(cfg, _Env(), given=False) == 10
    with pytest.raises(UsageError, match=r"walks the validation range, but this run has none "
                                         r"\(val_fraction=0, split_dates=None\); give it one"):
        engine.eval_interval(cfg, none, given=True)
    with pytest.raises(UsageError, match="--eval-every 3 walks the validation range"):
        engine.eval_interval(with_values(cfg, eval_every=3), none, given=False)
    with pytest.raises(UsageError, match="--early-stop 2 counts validation walks"):
        engine.eval_interval(with_values(cfg, early_stop=2), none, given=False)
    assert engine.eval_interval(with_values(cfg, early_stop=2), _Env(), given=False) == 10


def test_the_envs_answer_whether_a_run_validates(small_market):
    """The portfolio has nothing to validate on without validation bars; the masked walk (the
    base class's default) always has its validation params."""
    import tests.envs.masked  # noqa: F401  (registers masked-walk)
    from jaxtrade.data import build_market, synthetic_panel
    from jaxtrade.envs import make_env
    from tests.conftest import SMALL

    no_validation = build_market(synthetic_panel(SMALL), episode_length=32, val_fraction=0.0,
                                 test_fraction=0.1)
    assert make_env("portfolio", small_market).validation_unavailable() is None
    assert make_env("portfolio", no_validation).validation_unavailable() == "this run has none"
    walk = make_env("masked-walk", no_validation)
    assert walk.validation_unavailable() is None
    cfg = with_values(Config(), name="masked-walk", early_stop=3)
    assert engine.eval_interval(cfg, walk, given=True) == 10
