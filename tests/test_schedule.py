"""Hyperparameter schedules (`jaxtrade.schedule`): the reference file against the reference's
tables, the in-program table against the host's arithmetic, a trainer that follows it
iteration by iteration, and one-line errors for files that cannot be followed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import schedule
from jaxtrade.config import Config, ConfigError, resolve, validate, with_values
from jaxtrade.trainer import make_train
from tests.test_train import TINY as TRAIN_TINY
from tests.test_trainer import TINY

REFERENCE = "configs/schedules/reference.toml"
TOTAL = 10_000_000


@pytest.fixture(scope="module")
def reference():
    return schedule.load(REFERENCE)


# (timestep, key, value) read off the reference's tables (../shared/reference/000).
TABLE = [
    (0, "actor_lr", 1.2e-4), (250_000, "actor_lr", 1e-4), (500_000, "actor_lr", 8e-5),
    (1_500_000, "actor_lr", 4.5e-5), (3_500_000, "actor_lr", 3e-5),
    (6_000_000, "actor_lr", 1.75e-5), (9_500_000, "actor_lr", 1e-5),
    (12_000_000, "actor_lr", 1e-5),  # past the last phase: its end value holds
    (250_000, "critic_lr", 3e-4),
    (0, "ent_coef", 0.05), (750_000, "ent_coef", 0.0375), (2_500_000, "ent_coef", 0.0215),
    (8_000_000, "ent_coef", 0.0065), (9_999_999, "ent_coef", 0.005),
    (100_000, "gae_lambda", 0.935), (3_999_999, "gae_lambda", 0.95),
    (4_000_000, "gae_lambda", 0.96), (8_000_000, "gae_lambda", 0.97),
    (999_999, "clip", 0.25), (1_000_000, "clip", 0.2), (5_000_000, "clip", 0.15),
    (7_000_000, "clip", 0.1),
    (500_000, "vf_coef", 1.0), (1_000_000, "vf_coef", 0.8), (2_500_000, "vf_coef", 0.7),
    (4_000_000, "vf_coef", 0.6), (5_500_000, "vf_coef", 0.5), (9_000_000, "vf_coef", 0.4),
    (0, "dropout", 0.088), (999_999, "dropout", 0.088), (1_000_000, "dropout", 0.066),
    (4_000_000, "dropout", 0.044), (9_999_999, "dropout", 0.022),
]


@pytest.mark.parametrize("t, key, value", TABLE)
def test_reference_file_follows_the_reference_tables(reference, t, key, value):
    assert reference.value_at(key, t, 1.0, TOTAL) == pytest.approx(value, rel=1e-4)


def test_reference_phases_and_shapes(reference):
    assert len(reference.phases) == 9
    assert reference.ends(1.0, TOTAL)[-1] == TOTAL
    assert reference.ends(0.1, TOTAL)[:2] == [50_000, 100_000]
    assert reference.keys == ("actor_lr", "critic_lr", "gae_lambda", "clip", "ent_coef",
                              "vf_coef", "dropout")
    shapes = [(p.shapes["n_heads"], p.shapes["n_layers"], p.values["dropout"])
              for p in reference.phases]
    assert shapes[:5] == [(4, 2, (0.088, 0.088))] * 2 + [(4, 2, (0.066, 0.066))] * 3
    assert shapes[5:] == [(8, 3, (0.044, 0.044))] * 2 + [(8, 3, (0.022, 0.022))] * 2


def test_the_program_table_is_the_host_arithmetic(reference):
    table = reference.table(0.01, TOTAL)
    ts = np.concatenate([[0.0], np.sort(np.random.default_rng(0).uniform(0, 120_000, 64)),
                         np.asarray(reference.ends(0.01, TOTAL))])
    got = jax.jit(jax.vmap(table.values_at))(jnp.asarray(ts, jnp.float32))
    for key in reference.keys:
        want = [reference.value_at(key, float(np.float32(t)), 0.01, TOTAL) for t in ts]
        np.testing.assert_allclose(got[key], want, rtol=2e-5, atol=1e-9)


def test_end_fractions_follow_the_runs_length(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend_fraction = 0.5\nent_coef = [0.1, 0.0]\n"
                    "[[phase]]\nend_fraction = 1.0\nent_coef = 0.0\n")
    s = schedule.load(path)
    assert s.ends(1.0, 1000) == [500, 1000]
    assert s.value_at("ent_coef", 250, 1.0, 1000) == pytest.approx(0.05)
    assert s.value_at("ent_coef", 750, 1.0, 1000) == 0.0


def test_a_trainer_follows_its_schedule_every_iteration(small_market, tmp_path):
    """The hyperparameters of iteration i (logged in its metrics and used by its update)
    are the schedule's at timestep i x steps per iteration; keys it does not name keep the
    config's value."""
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 256\nent_coef = [0.1, 0.02]\nclip = 0.3\n"
                    "[[phase]]\nend = 512\nent_coef = [0.02, 0.0]\nclip = 0.1\n")
    cfg = resolve(with_values(Config(), **TINY, iterations=6, schedule=str(path)), "cpu")
    trainer = make_train(cfg, small_market)
    state = trainer.initial_state(jax.random.key(0))
    _, metrics = trainer.run(state, 6)
    steps = trainer.steps_per_iteration  # 128
    s = schedule.load(path)
    for key in ("ent_coef", "clip"):
        want = [s.value_at(key, i * steps, 1.0, 6 * steps) for i in range(6)]
        np.testing.assert_allclose(np.asarray(metrics[key]), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["actor_lr"]), cfg.ppo.actor_lr, rtol=1e-6)


BAD = [
    ("[schedule.transition]\npaitence = 5\n[[phase]]\nend = 9\nclip = 0.2\n",
     "unknown transition setting(s) paitence"),
    ("[[phase]]\nend = 9\nclip = 0.2\n[phase.transition]\nmode = 'up'\n",
     "phase '1' transition: mode must be 'max' or 'min'"),
    ("[[phase]]\nend = 9\nclip = 0.2\n[phase.transition]\ntargets = 3\n",
     "transition targets must be a table"),
    ("[schedule]\nphases = 3\n[[phase]]\nend = 9\nclip = 0.2\n",
     "[schedule] holds description and [schedule.transition] only"),
    ("", "no [[phase]] tables"),
    ("[[phase]]\nent_coef = 0.1\n", "give exactly one of end (timesteps) and end_fraction"),
    ("[[phase]]\nend = 10\nentropy = 0.1\n", "'entropy' is not a runtime hyperparameter"),
    ("[[phase]]\nend = 10\nent_coef = [0.1, 0.2, 0.3]\n", "a number or [start, end]"),
    ("[[phase]]\nend = 10\nclip = -1.0\n", "clip must be"),
    ("[[phase]]\nend = 10\nclip = 0.2\n[[phase]]\nend = 5\nclip = 0.1\n",
     "not after the phase before it"),
    ("[[phase]]\nend = 10\nclip = 0.2\n[[phase]]\nend = 20\nent_coef = 0.1\n",
     "names other hyperparameters"),
    ("[[phase]]\nend = 10\nclip = 0.2\n[phase.shapes]\nbatch = 3\n",
     "unknown shape setting(s) batch"),
    ("[[phase]\nend = 10\n", "not a readable TOML file"),
    ("[[phase]]\nend = 10\nclip = 0.2\ndropout = 0.1\n[phase.shapes]\ndropout = 0.1\n",
     "dropout is given twice"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_schedules_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(schedule.ScheduleError) as info:
        schedule.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="invalid config: schedule"):
        validate(with_values(Config(), schedule=str(path)))


def test_dropout_under_shapes_reads_as_the_phases_constant_rate(tmp_path):
    """Schedules written when dropout was a shape setting still load: the rate is the
    phase's constant runtime value."""
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 10\nclip = 0.2\n[phase.shapes]\ndropout = 0.1\n"
                    "ppo_epochs = 2\n")
    phase = schedule.load(path).phases[0]
    assert phase.values["dropout"] == (0.1, 0.1) and phase.shapes == {"ppo_epochs": 2.0}


def test_fraction_ends_are_checked_against_the_runs_length(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 1000\nclip = 0.2\n[[phase]]\nend_fraction = 0.5\n"
                    "clip = 0.1\n")
    validate(with_values(Config(), schedule=str(path)))  # n_envs unset: the run's length unknown
    cfg = resolve(with_values(Config(), **TINY, iterations=4, schedule=str(path)), "cpu")
    with pytest.raises(ConfigError, match="not after the phase before it"):
        validate(cfg)  # 4 x 128 steps: the second phase would end at 256


def test_a_missing_schedule_file_is_refused_by_validate():
    with pytest.raises(ConfigError, match="no such schedule file"):
        validate(with_values(Config(), schedule="nowhere.toml"))


PHASES = """
[[phase]]
name = "small"
end = {end}
ent_coef = [0.05, 0.02]
dropout = 0.1
[phase.shapes]
ppo_epochs = 1
n_heads = 2
n_layers = 1
[[phase]]
name = "grown"
end = {last}
ent_coef = 0.01
dropout = 0.0
[phase.shapes]
ppo_epochs = 2
n_heads = 4
n_layers = 2
"""


def test_shapes_switch_at_a_phase_boundary_and_resume_is_bit_exact(tmp_path):
    """A transformer run whose schedule grows it (2 heads x 1 block -> 4 x 2) and changes
    epochs and dropout after 2 iterations: the phase's checkpoint is tagged and kept, the
    grown program trains on, and a run stopped at the boundary and resumed ends
    bit-identical to one that was not stopped."""
    import contextlib
    import io

    from jaxtrade import checkpoint as ckpt
    from jaxtrade import train

    steps = 8 * 8
    path = tmp_path / "s.toml"
    path.write_text(PHASES.format(end=2 * steps, last=4 * steps))
    base = ["--market", "fixed", "--network", "transformer", "--hidden-dim", "8", "--context",
            "2", "--n-envs", "8", "--n-steps", "8", "--n-minibatches", "2", "--critic-epochs",
            "1", "--episode-length", "20", "--hyperparams", "n_bars=120,n_assets=2",
            "--eval-every", "0", "--save-every", "0", "--schedule", str(path)]

    def run(*extra):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert train.main([*base, *extra]) == 0
        return out.getvalue()

    text = run("--iterations", "4", "--run-dir", str(tmp_path / "straight"))
    # the banner shows the program the run starts with: phase 'small''s, not the config's
    assert "hidden 8 x 1 layers x 2 heads" in text and "1 joint + 1 critic epochs (phase " \
           "'small')" in text
    assert "phase 'grown' at iteration 3: ppo_epochs 2, n_heads 4, head_dim 2, n_layers 2; " \
           "built in" in text
    tagged = ckpt.select(tmp_path / "straight", 2)
    assert tagged.meta["phase"] == "small"
    assert sorted(ckpt.RunCheckpoints(tmp_path / "straight", tagged.config).all_steps()) == [2, 4]
    run("--iterations", "2", "--run-dir", str(tmp_path / "stopped"))
    resumed = run("--iterations", "4", "--resume", "--run-dir", str(tmp_path / "stopped"))
    assert "hidden 8 x 2 layers x 4 heads" in resumed and "(phase 'grown')" in resumed
    a = ckpt.read_params(ckpt.select(tmp_path / "straight", 4))
    b = ckpt.read_params(ckpt.select(tmp_path / "stopped", 4))
    assert "blocks_1" in a  # grown: a second block
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # evaluation and deployment build the network of the checkpoint's phase, not the config's
    small = tagged.model_config.network
    assert (tagged.config.network.n_layers, small.n_heads, small.n_layers) == (2, 2, 1)
    older = ckpt.Source(tagged.directory, tagged.step,  # saved before checkpoints said it
                        {k: v for k, v in tagged.meta.items() if k != "network"})
    assert older.model_config.network == small
    from jaxtrade.policy import load_policy

    assert load_policy(tmp_path / "straight", 2).config.network.n_layers == 1
    assert load_policy(tmp_path / "straight", 4).config.network.n_layers == 2


def test_phase_config_maps_the_reference_shapes_onto_a_run(reference):
    """minibatch_size becomes the closest n_minibatches that splits the envs over the
    devices; heads and layers apply to a transformer only (at the first phase's head width);
    the banner lists the phases whose program differs."""
    cfg = resolve(with_values(Config(), n_envs=64, n_steps=128, market="fixed"), "cpu")
    gru, applied, skipped = schedule.phase_config(reference, cfg, 0, n_devices=1)
    assert applied == {"n_minibatches": 16, "ppo_epochs": 10}  # 8192/512
    assert gru.ppo.n_minibatches == 16 and gru.network.dropout == cfg.network.dropout
    assert [s.split(" ")[0] for s in skipped] == ["n_heads", "n_layers"]
    _, applied, _ = schedule.phase_config(reference, cfg, 8, n_devices=4)
    assert applied["n_minibatches"] == 4  # 8192 / 1536 = 5.3: 4 (x 4 devices divides 64)
    tf = with_values(cfg, kind="transformer")
    grown, applied, skipped = schedule.phase_config(reference, tf, 5, n_devices=1)
    assert (applied["n_heads"], applied["n_layers"], applied["head_dim"]) == (8, 3, 64)
    assert not skipped
    switches = reference.switches(cfg, 1, 1.0, 10_000_000 // 8192 + 1)
    assert [p for _, p in switches] == [2, 5, 7]  # phases 3, 6 and 8 change the program
    assert switches[0][0] == -(-1_000_000 // 8192)  # the first iteration at or past 1M steps
    lines = reference.describe(cfg, 1, 1.0, 1222)
    assert len([line for line in lines if "a program of its own" in line]) == 3


def test_values_you_set_win_over_the_schedule(small_market, tmp_path):
    """--hyperparams and a runtime hyperparameter's own flag fix it for the run
    (`schedule_fixed`); the schedule still drives the others."""
    from jaxtrade import train

    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 512\nent_coef = [0.1, 0.02]\nclip = [0.3, 0.1]\n"
                    "vf_coef = 0.9\n")
    args = train.build_parser().parse_args([
        "--schedule", str(path), "--clip", "0.25", "--hyperparams", "ppo.ent_coef=0.03,n_bars=300"])
    cfg = train.config_from_args(args)
    assert cfg.run.schedule_fixed == ("clip", "ent_coef")
    cfg = resolve(with_values(cfg, **TINY, iterations=3), "cpu")
    lines = schedule.load(path).describe(cfg, 1, 1.0, 3)
    assert lines[0].endswith("vf_coef follow it inside the program; clip, ent_coef as you set")
    table = schedule.load(path).table(1.0, 384, cfg.run.schedule_fixed)
    assert table.keys == ("vf_coef",)
    trainer = make_train(cfg, small_market)
    _, metrics = trainer.run(trainer.initial_state(jax.random.key(0)), 3)
    np.testing.assert_allclose(np.asarray(metrics["ent_coef"]), 0.03, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["clip"]), 0.25, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["vf_coef"]), 0.9, rtol=1e-6)


PLATEAU = """
[schedule.transition]
patience = {patience}
threshold = 1e9
threshold_mode = "abs"
[[phase]]
name = "a"
end = {a}
ent_coef = [0.05, 0.03]
[[phase]]
name = "b"
end = {b}
ent_coef = [0.03, 0.01]
[[phase]]
name = "c"
end = {c}
ent_coef = 0.005
"""


# tests.test_train.TINY's tiny GRU run (4 synthetic assets x 400 bars): 8 envs x 8 steps = 64
# timesteps per iteration. Its shapes, so that a program compiled for a run there (or here)
# loads from the session's persistent cache.
TINY_RUN = (*TRAIN_TINY, "--save-every", "0")
TINY_RUN_STEPS = 8 * 8


def train_main(*argv, code: int = 0) -> str:
    """`python -m jaxtrade.train ARGV` in this process: its stdout and stderr, after checking
    its exit code."""
    import contextlib
    import io

    from jaxtrade import train

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert train.main([str(a) for a in argv]) == code
    return out.getvalue()


def test_a_schedule_of_dropout_alone_runs_one_program(tmp_path):
    """Dropout is a runtime hyperparameter: a schedule that ramps it in one phase and turns
    it off in the next compiles one training program (no phase has a program of its own,
    nothing is rebuilt at the boundary), and each iteration logs the rate it trained with."""
    steps = TINY_RUN_STEPS
    path = tmp_path / "s.toml"
    path.write_text(f"[[phase]]\nend = {2 * steps}\ndropout = [0.2, 0.1]\n"
                    f"[[phase]]\nend = {4 * steps}\ndropout = 0.0\n")
    run_dir = tmp_path / "run"
    text = train_main(*TINY_RUN, "--eval-every", 0, "--schedule", path, "--iterations", 4,
                      "--iterations-per-call", 4, "--run-dir", run_dir, "-v")
    assert "dropout follow it inside the program" in text
    assert "a program of its own" not in text and "built in" not in text
    assert text.count("compiling") == 1, text
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == [0, 0, 1, 1]
    np.testing.assert_allclose([r["dropout"] for r in rows], [0.2, 0.15, 0.0, 0.0], rtol=1e-6)


def test_phases_end_early_on_their_plateau_rule_and_resume_is_bit_exact(tmp_path):
    """A rule that no score can satisfy after the first (threshold 1e9) and a patience of one
    iteration: each phase ends at its second validation walk, the next starts at the
    following iteration with its ramp running to its own planned end, the ends are logged
    (phases.jsonl, the console with the validation by regime), the optimizer is reset, and
    a run stopped mid-phase (plateau state half way) and resumed ends bit-identical."""
    import json

    from jaxtrade import checkpoint as ckpt

    steps = TINY_RUN_STEPS
    path = tmp_path / "s.toml"
    path.write_text(PLATEAU.format(patience=steps, a=5 * steps, b=8 * steps, c=20 * steps))

    def run(*extra):
        return train_main(*TINY_RUN, "--eval-every", 1, "--schedule", path,
                          "--reset-optimizer-on-plateau", *extra)

    straight = tmp_path / "straight"
    text = run("--iterations", "6", "--run-dir", str(straight))
    assert "phase 'a' ended early (plateau: no improvement" in text
    assert "validation by regime (annualised mean return): bull" in text
    assert "fresh Adam moments for the next phase" in text
    phases = [json.loads(line) for line in (straight / "phases.jsonl").read_text().splitlines()]
    assert [(p["iteration"], p["phase"], p["name"]) for p in phases] == [(2, 1, "b"),
                                                                         (4, 2, "c")]
    assert all(p["reason"].startswith("plateau") for p in phases)
    assert set(phases[0]["val_regimes"]) == {"bull", "bear", "high_vol", "low_vol"}
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == [0, 0, 1, 1, 2, 2]
    s = schedule.load(path)
    # The ends each iteration knew: as planned in a; a's moved in b; b's too in c.
    known = [[5, 8, 20]] * 2 + [[2, 8, 20]] * 2 + [[2, 4, 20]] * 2
    want = [s.value_at("ent_coef", i * steps, 1.0, 6 * steps, [e * steps for e in ends])
            for i, ends in enumerate(known)]
    np.testing.assert_allclose([r["ent_coef"] for r in rows], want, rtol=1e-6)
    assert want[2] == pytest.approx(0.03) and want[3] == pytest.approx(0.03 - 0.02 / 6)
    tagged = ckpt.select(straight, 2)
    assert tagged.meta["phase"] == "a" and tagged.meta["schedule"]["ends"][0] == 2 * steps
    assert {2, 4} <= set(ckpt.RunCheckpoints(straight, tagged.config).all_steps())

    stopped = tmp_path / "stopped"
    run("--iterations", "3", "--run-dir", str(stopped))  # phase b's best seen, not yet fired
    run("--iterations", "6", "--resume", "--run-dir", str(stopped))
    a = ckpt.read_params(ckpt.select(straight, 6))
    b = ckpt.read_params(ckpt.select(stopped, 6))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert (stopped / "phases.jsonl").read_text() == (straight / "phases.jsonl").read_text()


def test_a_phase_rule_is_the_schedules_with_its_own_over_it(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[schedule.transition]\npatience = 1000\ncooldown = 200\n"
                    "[[phase]]\nend = 5000\nclip = 0.2\n"
                    "[[phase]]\nend = 9000\nclip = 0.1\n[phase.transition]\npatience = 3000\n"
                    "targets = { val_sharpe = 1.5 }\n")
    s = schedule.load(path)
    assert s.rule(0, 1.0).patience == 1000 and s.rule(0, 1.0).targets == {}
    second = s.rule(1, 0.1)  # timesteps scale with the phase ends
    assert (second.patience, second.cooldown, dict(second.targets)) == (300, 20,
                                                                       {"val_sharpe": 1.5})
    assert schedule.load(REFERENCE).rule(4, 1.0).patience == 100_000


def test_use_recommendations_trains_the_next_phase(tmp_path):
    """A run that stopped at the end of phase a recommends b; --checkpoint it
    --use-recommendations trains b (its hyperparameters, to its end; --hyperparams win for
    that phase) and recommends c; a run that followed no schedule continues the reference's
    phase it is in; durations and a missing --checkpoint are refused."""
    import json

    steps = TINY_RUN_STEPS
    path = tmp_path / "s.toml"
    path.write_text(PLATEAU.format(patience=steps, a=2 * steps, b=4 * steps, c=6 * steps))
    base = [*TINY_RUN, "--eval-every", "0"]
    run = train_main

    first, second = tmp_path / "first", tmp_path / "second"
    run(*base, "--schedule", str(path), "--iterations", "2", "--run-dir", str(first))
    rec = json.loads((first / "recommendations.json").read_text())
    assert rec["reached"] == {"phase": 0, "name": "a", "complete": True}
    assert rec["next"]["name"] == "b" and rec["next"]["end"] == 4 * steps
    assert rec["next"]["hyperparameters"] == {"ent_coef": [0.03, 0.01]}
    text = run("--checkpoint", str(first), "--use-recommendations", "--run-dir", str(second),
               "--hyperparams", "clip=0.15")
    assert "reached phase 'a' (complete, 128 timesteps); training phase 'b' to 256" in text
    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["phase"]) for r in rows] == [(3, 1), (4, 1)]
    np.testing.assert_allclose([r["ent_coef"] for r in rows], [0.03, 0.02], rtol=1e-6)
    np.testing.assert_allclose([r["clip"] for r in rows], 0.15, rtol=1e-6)
    assert json.loads((second / "recommendations.json").read_text())["next"]["name"] == "c"

    plain = tmp_path / "plain"
    run(*base, "--iterations", "2", "--run-dir", str(plain))
    text = run("--checkpoint", str(plain), "--use-recommendations", "--schedule-scale",
               "0.0005", "--run-dir", str(tmp_path / "ref"), "-q")
    assert "reached phase '1 exploration and initial pattern discovery' (part way" in text
    rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # iterations 3 and 4: to 250 timesteps, the first phase's end

    assert "needs --checkpoint" in run("--use-recommendations", code=2)
    assert "drop --iterations" in run("--checkpoint", str(first), "--use-recommendations",
                                      "--iterations", "9", code=2)


def test_factors_scale_the_schedule_within_sane_bounds(tmp_path):
    """An adjustment's factor scales a scheduled value from then on, clamped to
    `jaxtrade.adjust.SANE` (a factor set where gae_lambda was 0.935 must not push the 0.97 of
    a later phase past 0.99); unscaled values are the schedule's, whatever their range."""
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 100\ngae_lambda = 0.935\nent_coef = 0.3\n"
                    "[[phase]]\nend = 200\ngae_lambda = 0.97\nent_coef = 0.3\n")
    table = schedule.load(path).table(1.0, 200)
    assert table.values_at(jnp.float32(150))["ent_coef"] == pytest.approx(0.3)  # above SANE
    scaled = table.with_factors({"gae_lambda": 0.99 / 0.935, "ent_coef": 0.5})
    early, late = scaled.values_at(jnp.float32(50)), scaled.values_at(jnp.float32(150))
    assert early["gae_lambda"] == pytest.approx(0.99)
    assert late["gae_lambda"] == pytest.approx(0.99)  # 0.97 x 1.059 clamped
    assert late["ent_coef"] == pytest.approx(0.15)
