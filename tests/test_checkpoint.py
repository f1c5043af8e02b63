"""Checkpoints: bit-exact resume, what is kept, metadata and lineage, finding and refusing
checkpoints, metrics.jsonl on resume, and the signal handler."""

import json
import shutil
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import checkpoint as ckpt
from jaxtrade.config import Config, resolve, with_values
from jaxtrade.engine.start import load_run_market
from jaxtrade.trainer import make_train
from tests.cli import Cli

# tests.test_train.TINY's run (its market: 4 synthetic assets x 400 bars) with dropout, as
# the format-3 run below: `trainer`'s program is the one test_format_3_... runs (one compile,
# shared through the session's persistent cache).
TINY = dict(
    hidden_dim=8, n_gru_layers=1, dropout=0.1, n_envs=8, n_steps=8, n_minibatches=2,
    ppo_epochs=1, critic_epochs=1, episode_length=32, precision="fp32", keep_checkpoints=2,
    market="fixed", n_bars=400, n_assets=4,
)


@pytest.fixture(scope="module")
def cfg():
    return resolve(with_values(Config(), **TINY), "cpu")


@pytest.fixture(scope="module")
def market(cfg):
    """The market the CLI loads for `cfg`."""
    return load_run_market(cfg)


@pytest.fixture(scope="module")
def trainer(cfg, market):
    return make_train(cfg, market)


@pytest.fixture(scope="module")
def fresh(trainer):
    """A new initial state each call (`run` donates its input), placed as the CLI places it."""
    return lambda: trainer.initial_state(jax.random.key(0))


def advance(trainer, state, n):
    """n host calls of one iteration each, as the CLI makes them."""
    for _ in range(n):
        state, _ = trainer.run(state, 1)
    return state


def raw(state):
    """`state` with comparable leaves (the typed PRNG key as its key data)."""
    return state.replace(rng=jax.random.key_data(state.rng))


def row(iteration, ret):
    return {"iteration": iteration, "episode_return_mean": ret, "episodes": iteration,
            "policy_loss": 0.0}


def save_run(tmp_path, cfg, state, scores, **kw):
    """Saves `state` once per score (iterations 1, 2, ...) and returns the closed store."""
    store = ckpt.RunCheckpoints(tmp_path, cfg, **kw)
    for i, s in enumerate(scores, start=1):
        store.record(row(i, s))
        assert store.save(state, i)
    store.close()
    return store


def test_stopped_and_resumed_run_ends_bit_identical(trainer, cfg, fresh, tmp_path):
    """4 iterations straight through == 2, save, restore in a new manager, 2 more: params,
    both optimizer states, envs, GRU states, RNG and counters, bit for bit."""
    straight = advance(trainer, fresh(), 4)
    first = advance(trainer, fresh(), 2)
    store = ckpt.RunCheckpoints(tmp_path, cfg)
    store.record(row(2, 0.1))
    assert store.save(first, 2)
    store.close()

    restored = ckpt.restore_state(ckpt.latest(tmp_path), trainer)
    chex.assert_trees_all_equal(raw(restored), raw(first))
    assert str(jax.random.key_impl(restored.rng)) == str(jax.random.key_impl(first.rng))
    assert not np.array_equal(straight.params["gru"]["layer_0"]["input"]["kernel"],
                              first.params["gru"]["layer_0"]["input"]["kernel"])
    resumed = advance(trainer, trainer.place(restored), 2)
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.actor_opt, straight.actor_opt)
    chex.assert_trees_all_equal(resumed.critic_opt, straight.critic_opt)
    chex.assert_trees_all_equal(raw(resumed), raw(straight))
    assert int(resumed.iteration) == 4


def test_permuted_asset_orders_train_and_resume_bit_identical(small_market, tmp_path):
    """--augment permute: every env holds an order of the assets of its own (part of the
    checkpointed state), and a run stopped and resumed ends as one that was not."""
    cfg = resolve(with_values(Config(), **TINY, augment="permute"), "cpu")
    trainer = make_train(cfg, small_market)
    straight = advance(trainer, trainer.initial_state(jax.random.key(0)), 2)
    perms = np.asarray(straight.carry.env_state.perm)  # [B, A]
    n_assets = small_market.n_assets
    assert perms.shape == (cfg.ppo.n_envs, n_assets)
    assert (np.sort(perms, axis=1) == np.arange(n_assets)).all()
    assert len({tuple(p) for p in perms}) > 1
    first = advance(trainer, trainer.initial_state(jax.random.key(0)), 1)
    store = ckpt.RunCheckpoints(tmp_path, cfg)
    store.record(row(1, 0.1))
    assert store.save(first, 1)
    store.close()
    restored = ckpt.restore_state(ckpt.latest(tmp_path), trainer)
    resumed = advance(trainer, trainer.place(restored), 1)
    chex.assert_trees_all_equal(raw(resumed), raw(straight))


def test_format_1_checkpoints_with_the_old_gru_layout_resume(trainer, cfg, fresh, tmp_path,
                                                              monkeypatch):
    """Checkpoints written before the recurrent state went env-first (format 1, GRU state
    [L, B, H], and no max_grad_norm or dropout hyperparameter) restore into today's
    [B, L, H] state exactly."""
    state = advance(trainer, fresh(), 1)
    hidden = state.carry.hidden  # [B, L, H]
    assert hidden.shape[0] != hidden.shape[1]
    old = ckpt._legacy_target(
        state.replace(carry=state.carry.replace(hidden=jnp.transpose(hidden, (1, 0, 2)))), 1)
    with monkeypatch.context() as m:
        m.setattr(ckpt, "FORMAT", 1)
        store = ckpt.RunCheckpoints(tmp_path, cfg)
        store.record(row(1, 0.1))
        assert store.save(old, 1)
        store.close()
    source = ckpt.latest(tmp_path)
    assert source.meta["format"] == 1
    restored = ckpt.restore_state(source, trainer)
    chex.assert_trees_all_equal(raw(restored), raw(state))


# The old programs' numbers are matched to REL: XLA's CPU kernels sum in an order that
# depends on the machine's vector units, and the policy loss, a difference of nearly equal
# terms, moved by 5e-5 relative between the x86 machine that recorded format 2 and another
# (approx_kl and the gradient norm not at all). A clip norm 1.4% off (0.69 for 0.7) moves
# the policy loss and approx_kl by about 1e-3, so REL still tells the right one.
REL = 2e-4

# A run saved by the code before max_grad_norm was a runtime hyperparameter (format 2, commit
# cbf7b0e): `python -m jaxtrade.train` with tests.test_train.TINY's flags, its --hyperparams
# ending in ",max_grad_norm=0.7", `--iterations 1 --save-every 0` (run/, without tb/); and
# straight_metrics.jsonl, the metrics of the same command with `--iterations 2`.
FORMAT_2 = Path(__file__).parent / "fixtures" / "format2"


def format_2_run(tmp_path) -> Path:
    """A copy of the format-2 run (a resume writes into its run directory)."""
    return Path(shutil.copytree(FORMAT_2 / "run", tmp_path / "run"))


def format_2_straight_row(iteration: int) -> dict:
    rows = (FORMAT_2 / "straight_metrics.jsonl").read_text().splitlines()
    return json.loads(rows[iteration - 1])


def test_format_2_checkpoints_restore_with_the_saved_clip_norm(tmp_path):
    """A checkpoint without max_grad_norm (in HParams or the optimizer chains) restores with
    the saved config's value in all three places, and its next iteration clips with it:
    the old program's numbers (its gradients exceed the clip, so another clip differs)."""
    source = ckpt.latest(format_2_run(tmp_path))
    assert source.meta["format"] == 2 and source.config.ppo.max_grad_norm == 0.7
    trainer = make_train(source.config, load_run_market(source.config))
    state = ckpt.restore_state(source, trainer)
    assert float(state.hparams.max_grad_norm) == pytest.approx(0.7)
    for opt in (state.actor_opt, state.critic_opt):
        assert float(opt.hyperparams["max_grad_norm"]) == pytest.approx(0.7)
    state, metrics = trainer.run(trainer.place(state), 1)
    expected = format_2_straight_row(2)
    assert expected["actor_grad_norm"] > 0.7
    for k in ("policy_loss", "value_loss", "approx_kl", "actor_grad_norm", "critic_loss_after",
              "explained_variance"):
        assert float(metrics[k][0]) == pytest.approx(expected[k], rel=REL, abs=1e-8), k
    assert float(metrics["max_grad_norm"][0]) == pytest.approx(0.7)


@pytest.mark.slow
def test_format_2_run_resumes_from_the_cli_as_the_old_code_continued(xla_cache, tmp_path):
    """`--resume` of the format-2 run ends as the old code's uninterrupted run: every
    column of its iteration 2 but the clock's (and the new max_grad_norm column)."""
    run_dir = format_2_run(tmp_path)
    Cli(xla_cache).check("--run-dir", run_dir, "--resume", "--iterations", 2, "-q")
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    expected = format_2_straight_row(2)
    assert last["iteration"] == 2 and last["max_grad_norm"] == pytest.approx(0.7)
    same = {k: v for k, v in expected.items() if k not in ("sps", "wall_s")}
    assert set(same) <= set(last)
    for k, v in same.items():
        if isinstance(v, bool | str) or v is None:
            assert last[k] == v, k
        else:  # a number or a list of them (action_freq)
            assert last[k] == pytest.approx(v, rel=REL, abs=1e-8), k
    assert ckpt.latest(run_dir).meta["format"] == ckpt.FORMAT


# A run saved by the code before dropout was a runtime hyperparameter (format 3, commit
# c25c211): `python -m jaxtrade.train` with tests.test_train.TINY's flags, its --hyperparams
# ending in ",dropout=0.1", `--iterations 1 --save-every 0` (run/, without tb/); and
# straight_metrics.jsonl, the metrics of the same command with `--iterations 2`.
FORMAT_3 = Path(__file__).parent / "fixtures" / "format3"


def test_format_3_checkpoints_restore_with_the_saved_dropout(tmp_path):
    """A checkpoint without the dropout hyperparameter restores with the saved config's
    rate, and its next iteration trains with it: the old program's numbers (its masks are
    flax's nn.Dropout masks, so another rate, or none, differs)."""
    source = ckpt.latest(Path(shutil.copytree(FORMAT_3 / "run", tmp_path / "run")))
    assert source.meta["format"] == 3 and source.config.network.dropout == 0.1
    trainer = make_train(source.config, load_run_market(source.config))
    assert trainer.rule.dropout  # the network has dropout sites
    state = ckpt.restore_state(source, trainer)
    assert float(state.hparams.dropout) == pytest.approx(0.1)
    assert float(state.hparams.max_grad_norm) == pytest.approx(source.config.ppo.max_grad_norm)
    state, metrics = trainer.run(trainer.place(state), 1)
    expected = json.loads((FORMAT_3 / "straight_metrics.jsonl").read_text().splitlines()[1])
    for k in ("policy_loss", "value_loss", "approx_kl", "actor_grad_norm", "critic_loss_after",
              "explained_variance"):
        assert float(metrics[k][0]) == pytest.approx(expected[k], rel=REL, abs=1e-7), k
    assert float(metrics["dropout"][0]) == pytest.approx(0.1)


def test_keeps_the_latest_the_best_and_the_final(cfg, fresh, tmp_path):
    state = fresh()
    store = save_run(tmp_path, cfg, state, [1.0, 5.0, 2.0, 3.0])  # keep_checkpoints=2
    assert store.all_steps() == [2, 3, 4]  # best (2), latest two (3, 4: 4 is the final)
    assert ckpt.latest(tmp_path).meta["best"] == {
        "iteration": 2, "score": 5.0, "metric": "episode_return_mean"}
    # A later process ranks the earlier checkpoints by the scores they were saved with.
    store = ckpt.RunCheckpoints(tmp_path, cfg, resumed=ckpt.latest(tmp_path).meta)
    for i, s in zip((5, 6, 7), (1.0, 6.0, 0.0), strict=True):
        store.record(row(i, s))
        store.save(state, i)
    assert not store.save(state, 7)  # a step is saved once
    store.close()
    assert store.all_steps() == [6, 7]


def test_metadata_records_config_metrics_best_and_lineage(cfg, fresh, tmp_path):
    lineage = ckpt.Lineage("ckpt/parent", 40, generation=2, base_timesteps=1000, start="weights")
    save_run(tmp_path, cfg, fresh(), [0.5, 0.25], lineage=lineage)
    meta = ckpt.latest(tmp_path).meta
    assert meta["iteration"] == 2 and meta["timesteps"] == 2 * 64 and meta["format"] == 4
    assert ckpt.latest(tmp_path).config == cfg
    assert meta["metrics"] == row(2, 0.25)
    assert meta["history"]["iteration"] == [1, 2]
    assert meta["history"]["episode_return_mean"] == [0.5, 0.25]
    assert meta["best"]["iteration"] == 1
    assert meta["lineage"] == {
        "parent_run": "ckpt/parent", "parent_checkpoint": 40, "generation": 2,
        "base_timesteps": 1000, "start": "weights", "total_timesteps": 1128,
    }
    assert meta["interrupted"] is False and meta["final"] is False
    assert meta["n_devices"] == jax.device_count() and meta["rng_impl"] == "threefry2x32"


def test_lineage_of_children():
    parent = ckpt.Lineage("a", 3, generation=1, base_timesteps=500)
    whole = ckpt.Lineage.child(parent, "b", 10, timesteps=640, start="checkpoint")
    assert (whole.generation, whole.base_timesteps) == (2, 500)  # the counter carries on
    weights = ckpt.Lineage.child(parent, "b", 10, timesteps=640, start="weights")
    assert (weights.generation, weights.base_timesteps) == (2, 1140)  # the counter restarts
    assert weights.total_timesteps(64) == 1204
    fresh = ckpt.Lineage.child(parent, "b", 10, timesteps=640, start="fresh")
    assert (fresh.parent_run, fresh.generation, fresh.base_timesteps) == ("b", 0, 0)


def test_locate_accepts_run_checkpoints_and_step_directories(cfg, fresh, tmp_path):
    save_run(tmp_path, cfg, fresh(), [1.0, 2.0])
    checkpoints = tmp_path / ckpt.CHECKPOINT_DIR
    assert ckpt.locate(tmp_path).path == checkpoints / "2"
    assert ckpt.locate(checkpoints).step == 2
    assert ckpt.locate(checkpoints / "1").step == 1
    partial = checkpoints / "3.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    assert ckpt.latest(tmp_path).step == 2  # an unfinished save is never picked
    with pytest.raises(ckpt.CheckpointError, match="an unfinished save"):
        ckpt.locate(partial)


def test_an_evaluating_run_ranks_by_val_score_and_select_names_checkpoints(cfg, fresh,
                                                                            tmp_path):
    state = fresh()
    store = ckpt.RunCheckpoints(tmp_path, cfg, evaluating=True)
    # Iteration 1 is not evaluated: however high its episode return, it ranks below the rest.
    new_bests = []
    for i, ret, score in ((1, 9.0, None), (2, 0.1, 12.5), (3, 0.2, -5.0), (4, 0.3, -1.0)):
        new_bests.append(store.record(
            {**row(i, ret), **({} if score is None else {"val_score": score, "val_sharpe": i})}))
        assert store.save(state, i)
    store.close()
    # Every validation score is a candidate compared: counted for the deflated Sharpe ratio.
    assert new_bests == [False, True, False, False]
    assert ckpt.latest(tmp_path).meta["selection"] == {
        "metric": "val_score", "validations": 3, "since_best": 2, "best_iteration": 2,
        "best_score": 12.5, "sharpes": [2, 3, 4]}
    assert store.all_steps() == [2, 3, 4]  # keep_checkpoints=2 and the best
    assert ckpt.latest(tmp_path).meta["best"] == {
        "iteration": 2, "score": 12.5, "metric": "val_score"}
    assert ckpt.score(row(1, 9.0), evaluating=True) == ckpt.UNEVALUATED
    assert ckpt.score(row(1, 9.0)) == 9.0
    assert ckpt.select(tmp_path, "best").step == 2
    assert ckpt.select(tmp_path, "latest").step == 4
    assert ckpt.select(tmp_path, 3).meta["metrics"]["val_score"] == -5.0
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint at iteration 1 \(kept: 2, "
                                                   r"3, 4\)"):
        ckpt.select(tmp_path, "1")
    with pytest.raises(ckpt.CheckpointError, match="'best', 'latest' or an iteration number"):
        ckpt.select(tmp_path, "newest")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "no such run directory"),
        (lambda d: d, "no complete checkpoint to resume from in"),
        (lambda d: (d / "checkpoints" / "5.orbax-checkpoint-tmp-99").mkdir(parents=True) or d,
         "only unfinished saves: 5.orbax-checkpoint-tmp-99"),
    ],
)
def test_latest_names_what_is_missing(make, message, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=message) as e:
        ckpt.latest(make(tmp_path))
    assert "\n" not in str(e.value)


def test_corrupt_checkpoints_give_one_line(cfg, fresh, trainer, tmp_path, capfd):
    save_run(tmp_path, cfg, fresh(), [1.0, 2.0])
    step = tmp_path / ckpt.CHECKPOINT_DIR / "2"
    (step / "meta" / "metadata").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="2: cannot read checkpoint metadata"):
        ckpt.latest(tmp_path)
    step1 = tmp_path / ckpt.CHECKPOINT_DIR / "1"
    source = ckpt.locate(step1)
    for f in (step1 / "state").rglob("*"):  # flip a byte in the middle of every data file
        if f.is_file() and f.stat().st_size > 0 and f.parent.name == "d":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(data)
    with pytest.raises(ckpt.CheckpointError, match="1: cannot read checkpoint") as e:
        ckpt.restore_state(source, trainer)
    assert "\n" not in str(e.value)
    time.sleep(0.5)  # reads still in flight finish: they must not print tracebacks
    assert "Traceback" not in capfd.readouterr().err


def test_shape_mismatches_name_the_leaf_and_both_shapes(cfg, fresh, market, tmp_path,
                                                        capsys):
    save_run(tmp_path, cfg, fresh(), [1.0])
    source = ckpt.latest(tmp_path)
    wider = make_train(resolve(with_values(cfg, hidden_dim=16), "cpu"), market)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.restore_params(source, wider)
    assert str(e.value) == (
        f"architecture mismatch with {source.path}: params/encoder/dense_0/bias is (8,) in the "
        f"checkpoint but (16,) in this run (use --on-mismatch fresh to start from fresh "
        f"weights)"
    )
    assert ckpt.restore_params(source, wider, on_mismatch="fresh") is None
    assert "warning: architecture mismatch" in capsys.readouterr().err
    more_envs = make_train(resolve(with_values(cfg, n_envs=16), "cpu"), market)
    with pytest.raises(ckpt.CheckpointError, match=r"carry/env_state/peak is \(8,\) in the "
                       r"checkpoint but \(16,\) in this run$"):
        ckpt.restore_state(source, more_envs, on_mismatch="refuse")


def test_warm_start_takes_params_and_keeps_fresh_optimizers_and_envs(
    cfg, trainer, fresh, market, tmp_path
):
    trained = advance(trainer, fresh(), 2)
    expected = jax.tree.map(np.asarray, trained.params)
    save_run(tmp_path, cfg, trained, [1.0])
    more_envs = make_train(resolve(with_values(cfg, n_envs=16), "cpu"), market)
    params = ckpt.restore_params(ckpt.latest(tmp_path), more_envs)
    new = jax.jit(more_envs.init)(jax.random.key(1))
    started = ckpt.warm_start(new, params)
    chex.assert_trees_all_equal(started.params, expected)
    chex.assert_trees_all_equal(started.actor_opt, new.actor_opt)
    assert started.carry.obs.shape[0] == 16 and int(started.iteration) == 0


def test_first_shape_mismatch():
    saved = {"a/b": (3, 4), "a/c": (2,)}
    assert ckpt.first_shape_mismatch(saved, dict(saved)) is None
    assert ckpt.first_shape_mismatch(saved, {"a/b": (3, 5), "a/c": (2,)}) == ("a/b", (3, 4),
                                                                              (3, 5))
    assert ckpt.first_shape_mismatch(saved, {"a/b": (3, 4)}) == ("a/c", (2,), None)


FLAGS = {"n_envs": "--n-envs", "hidden_dim": "--hidden-dim", "seed": "--seed", "path": "--data"}


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_envs=16), "--n-envs 16 would change array shapes or the market: the run was "
                          "saved with n_envs=8; --resume keeps them"),
        (dict(hidden_dim=16), "--hidden-dim 16 would change"),
        (dict(precision="bf16"), "precision='bf16' would change"),
        (dict(n_assets=6), "n_assets=6 would change array shapes or the market: the run was "
                           "saved with n_assets=4"),
        (dict(path="prices.csv"), "--data 'prices.csv' would change"),
        (dict(seed=3), "--seed 3: --resume continues the saved random stream of seed=0"),
    ],
)
def test_resume_refuses_shape_market_and_seed_changes(cfg, change, message):
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.resume_changes(cfg, with_values(cfg, **change), FLAGS)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_resume_returns_hyperparameter_and_duration_changes(cfg):
    new = with_values(cfg, ent_coef=0.05, actor_lr=1e-4, iterations=20, run_dir="elsewhere",
                      ppo_epochs=2)
    changes = ckpt.resume_changes(cfg, new, FLAGS)
    assert {c.key for c in changes} == {"ent_coef", "actor_lr", "iterations", "ppo_epochs"}
    assert ckpt.hparam_values(changes) == {"ent_coef": 0.05, "actor_lr": 1e-4}
    assert "ent_coef 0.01 -> 0.05" in [str(c) for c in changes]
    assert ckpt.resume_changes(cfg, cfg) == []


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "x": i * 0.5}) for i in range(1, 6)]
    path.write_text("\n".join(lines) + '\n{"iteration": 6, "x"')  # torn by a hard kill
    assert ckpt.truncate_metrics(path, 3) == (3, 3)
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
    assert ckpt.truncate_metrics(tmp_path / "absent.jsonl", 3) == (0, 0)


def test_resume_command_quotes_the_run_dir():
    assert ckpt.resume_command("ckpt/my run") == (
        "python -m jaxtrade.train --run-dir 'ckpt/my run' --resume")


def test_save_every_and_keep_checkpoints_are_validated():
    from jaxtrade.config import ConfigError, validate

    with pytest.raises(ConfigError, match="save_every=-1 must be >= 0; keep_checkpoints=0 "
                       "must be >= 1"):
        validate(with_values(Config(), save_every=-1, keep_checkpoints=0))


def test_copies_of_a_run_restore_alike(cfg, fresh, trainer, tmp_path):
    """A run directory moved or copied elsewhere still resumes (no absolute paths inside)."""
    save_run(tmp_path / "a", cfg, fresh(), [1.0])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = ckpt.restore_state(ckpt.latest(tmp_path / "a"), trainer)
    b = ckpt.restore_state(ckpt.latest(tmp_path / "b"), trainer)
    chex.assert_trees_all_equal(raw(a), raw(b))
