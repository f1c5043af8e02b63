"""The rule book: each rule fires on the row it is for and not on a near miss, with the
reference's numbers; clamps, skipped rules, conflicts; hparams.jsonl written, truncated on
resume and read back with each change's effect."""

import json
import math

import numpy as np
import pytest

from jaxtrade import adjust as A

HP = dict(actor_lr=3e-4, critic_lr=9e-4, ent_coef=0.01, clip=0.2, vf_coef=0.7, gae_lambda=0.95,
          gamma=0.99, max_grad_norm=0.5)
SHAPES = dict(ppo_epochs=4, minibatch_size=2048)
T = 2_000_000  # in the reference's 1M-3M phase: vf_coef 0.6-0.8
# A healthy validation: good performance fires, nothing else.
BASE = dict(val_sharpe=1.5, val_max_drawdown=0.1, val_n_trades=50.0, explained_variance=0.5,
            entropy=0.5 * math.log(12), valid_actions=12.0, value_loss=1.0)
PREVIOUS = dict(value_loss=1.0)


def fired(row=None, hp=None, previous=PREVIOUS, **kw):
    d = A.decide({**BASE, **(row or {})}, {**HP, **(hp or {})}, SHAPES, T, previous=previous,
                 **kw)
    return {f.rule for f in d.fired}, d


def changes(d, rule):
    return {a.key: a.new for a in d.adjustments if a.rule == rule}


def test_the_base_row_fires_only_good_performance():
    names, d = fired()
    assert names == {"good_performance"}
    assert changes(d, "good_performance") == pytest.approx(
        dict(actor_lr=3.3e-4, critic_lr=9.9e-4, ent_coef=0.009, clip=0.18))
    assert d.hparams() == changes(d, "good_performance") and d.shapes() == {}


# rule, a row that fires it, a near miss that does not (hyperparameter keys set those)
CASES = [
    ("negative_explained_var", dict(explained_variance=-0.6), dict(explained_variance=-0.4)),
    ("poor_performance", dict(val_sharpe=-0.2, val_max_drawdown=0.2),
     dict(val_sharpe=-0.2, val_max_drawdown=0.15)),
    ("high_drawdown", dict(val_max_drawdown=0.16), dict(val_max_drawdown=0.15)),
    ("high_leverage", dict(val_avg_leverage=3.5), dict(val_avg_leverage=2.5)),
    ("low_trading", dict(val_n_trades=9.0), dict(val_n_trades=10.0)),
    ("stable_suboptimal", dict(val_sharpe=0.99), dict(val_sharpe=1.0)),
    ("good_performance", dict(val_sharpe=1.0), dict(val_sharpe=1.0, val_max_drawdown=0.2)),
    ("vf_up_negative_ev", dict(explained_variance=-0.1), dict(explained_variance=0.1)),
    ("vf_up_value_loss", dict(value_loss=1.3), dict(value_loss=1.1)),
    ("vf_down_low_entropy", dict(entropy=0.1 * math.log(12)), dict(entropy=0.3 * math.log(12))),
    ("vf_down_stable", dict(val_sharpe=0.5), dict(val_sharpe=0.5, vf_coef=0.6)),
    ("vf_into_range_up", dict(vf_coef=0.5), dict(vf_coef=0.6)),
    ("vf_into_range_down", dict(vf_coef=0.9), dict(vf_coef=0.8)),
]


def fired_on(values):
    """`fired` with `values` split into the row and the hyperparameters."""
    return fired({k: v for k, v in values.items() if k not in HP},
                 {k: v for k, v in values.items() if k in HP})


@pytest.mark.parametrize("rule, fires, misses", CASES, ids=[c[0] for c in CASES])
def test_each_rule_fires_on_its_row_and_not_on_a_near_miss(rule, fires, misses):
    names, d = fired_on(fires)
    assert rule in names
    assert any(a.rule == rule for a in d.adjustments), d
    assert rule not in fired_on(misses)[0]


def test_every_rule_of_the_book_is_tested():
    assert [r.name for r in A.REFERENCE] == [c[0] for c in CASES]


def test_the_reference_numbers():
    # Highly negative explained variance: the "immediate fixes".
    _, d = fired(dict(explained_variance=-0.6))
    assert changes(d, "negative_explained_var") == pytest.approx(dict(
        actor_lr=1.5e-4, critic_lr=4.5e-4, vf_coef=1.4, ppo_epochs=3, max_grad_norm=0.3))
    d = A.decide({**BASE, "explained_variance": -0.6}, {**HP, "vf_coef": 1.5},
                 {**SHAPES, "ppo_epochs": 8}, T)
    assert changes(d, "negative_explained_var")["vf_coef"] == 2.0  # up to 2.0
    assert changes(d, "negative_explained_var")["ppo_epochs"] == 6  # max(e - 2, 3)
    # Poor performance: the batch (the minibatch, in env steps) x1.2, gae_lambda <= 0.99.
    _, d = fired(dict(val_sharpe=-0.2, val_max_drawdown=0.2))
    assert changes(d, "poor_performance") == pytest.approx(dict(
        actor_lr=2.4e-4, critic_lr=7.2e-4, ent_coef=0.013, clip=0.24, minibatch_size=2458,
        gae_lambda=0.99))
    assert d.shapes() == {"minibatch_size": 2458}
    _, d = fired(dict(val_max_drawdown=0.2), dict(clip=0.28, gae_lambda=0.85))
    assert changes(d, "high_drawdown") == pytest.approx(dict(clip=0.3, gae_lambda=0.935))
    _, d = fired(dict(val_sharpe=0.5))
    assert changes(d, "stable_suboptimal") == pytest.approx(dict(
        actor_lr=2.7e-4, critic_lr=8.1e-4, ent_coef=0.011, ppo_epochs=5))
    assert changes(d, "vf_down_stable") == pytest.approx(dict(vf_coef=0.6))  # not below 0.6
    _, d = fired(dict(explained_variance=-0.1))
    assert changes(d, "vf_up_negative_ev") == pytest.approx(dict(vf_coef=0.8))  # not above 0.8
    _, d = fired(hp=dict(vf_coef=1.5))
    assert changes(d, "vf_into_range_down") == dict(vf_coef=0.8)


def test_vf_phase_ranges_scale_with_the_run():
    assert A.vf_range(0) == (0.8, 1.2)
    assert A.vf_range(999_999) == (0.8, 1.2)
    assert A.vf_range(1_000_000) == (0.6, 0.8)
    assert A.vf_range(4_000_000) == (0.4, 0.6)
    assert A.vf_range(9_000_000) == A.vf_range(50_000_000) == (0.3, 0.5)
    assert A.vf_range(150_000, scale=0.1) == (0.6, 0.8)
    _, d = fired(hp=dict(vf_coef=0.7), scale=10.0)  # 2M of a 100M timeline: phase 1
    assert changes(d, "vf_into_range_up") == dict(vf_coef=0.8)


def test_every_result_stays_in_its_sane_range():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        row = dict(val_sharpe=rng.normal(0, 2), val_max_drawdown=rng.uniform(0, 0.5),
                   val_n_trades=float(rng.integers(0, 30)), explained_variance=rng.normal(0, 1),
                   entropy=rng.uniform(0, 2.5), valid_actions=12.0, value_loss=rng.uniform(0, 2),
                   val_avg_leverage=rng.uniform(0, 6))
        hp = {k: v * 10 ** rng.uniform(-2, 2) for k, v in HP.items()}
        hp["gae_lambda"] = hp["gamma"] = rng.uniform(0.5, 1.0)
        shapes = dict(ppo_epochs=int(rng.integers(1, 40)),
                      minibatch_size=int(rng.integers(1, 9999)))
        d = A.decide(row, hp, shapes, rng.uniform(0, 2e7), previous=PREVIOUS)
        for a in d.adjustments:
            lo, hi = A.SANE[a.key]
            assert lo <= a.new <= hi, a
            if a.key in A.INTEGER_KEYS:
                assert a.new == int(a.new)
            seen.add(a.key)
    assert seen == set(A.SANE) - {"gamma"}
    _, d = fired(dict(val_sharpe=2.0), dict(actor_lr=9.5e-3, ent_coef=0.0))
    assert changes(d, "good_performance")["actor_lr"] == 1e-2  # 1.1 x 9.5e-3, clamped


def test_rules_without_their_metrics_are_skipped_and_say_why():
    _, d = fired(previous=None)
    why = {s.rule: s.reason for s in d.skipped}
    assert "val_avg_leverage" in why["high_leverage"]  # the portfolio env reports no leverage
    assert "prev_value_loss" in why["vf_up_value_loss"]  # no previous validation
    assert set(why) == {"high_leverage", "vf_up_value_loss"}
    _, d = fired(dict(val_avg_leverage=4.0))  # an env that reports it
    assert "high_leverage" not in {s.rule for s in d.skipped}
    _, d = fired(dict(val_sharpe=math.nan, valid_actions=1.0))  # NaN; log(1) = 0
    why = {s.rule: s.reason for s in d.skipped}
    assert "val_sharpe" in why["stable_suboptimal"] and "val_sharpe" in why["good_performance"]
    assert "entropy_ratio" in why["vf_down_low_entropy"]
    # A change to a key the caller did not give (a trainer without max_grad_norm).
    hp = {k: v for k, v in HP.items() if k != "max_grad_norm"}
    d = A.decide({**BASE, "explained_variance": -0.6}, hp, SHAPES, T)
    assert any(s.rule == "negative_explained_var" and "max_grad_norm" in s.reason
               for s in d.skipped)
    assert "max_grad_norm" not in d.hparams() and "actor_lr" in d.hparams()


def test_the_first_rule_that_names_a_key_decides_it():
    # Negative explained variance and poor performance both change the learning rates.
    names, d = fired(dict(explained_variance=-0.6, val_sharpe=-0.2, val_max_drawdown=0.2))
    assert {"negative_explained_var", "poor_performance", "high_drawdown",
            "vf_up_negative_ev"} <= names
    by_key = {a.key: a for a in d.adjustments}
    assert len(by_key) == len(d.adjustments)  # one change per key
    assert by_key["actor_lr"].rule == "negative_explained_var"
    assert by_key["actor_lr"].new == pytest.approx(1.5e-4)
    assert by_key["clip"].rule == "poor_performance"  # before high_drawdown
    assert by_key["ent_coef"].rule == "poor_performance"
    lost = {(a.rule, a.key) for a in d.overridden}
    assert {("poor_performance", "actor_lr"), ("high_drawdown", "clip"),
            ("vf_up_negative_ev", "vf_coef")} <= lost
    # A claimed key stays claimed even when the first rule leaves it where it is.
    book = (A.Rule("first", (A.Condition("val_sharpe", ">", 0),), (A.Change("clip", "min", 0.3),)),
            A.Rule("second", (A.Condition("val_sharpe", ">", 0),), (A.Change("clip", "set", 0.1),)))
    d = A.decide(BASE, HP, SHAPES, T, book=book)
    assert d.adjustments == () and [(a.rule, a.new) for a in d.overridden] == [("second", 0.1)]
    d = A.decide(BASE, HP, SHAPES, T, book=book[::-1])
    assert d.adjustments == (A.Adjustment("second", "clip", 0.2, 0.1),)


def test_fired_rules_carry_the_values_that_triggered_them():
    _, d = fired(dict(val_sharpe=-0.2, val_max_drawdown=0.2, entropy=0.1 * math.log(12)))
    by_rule = {f.rule: f.metrics for f in d.fired}
    assert by_rule["poor_performance"] == {"val_sharpe": -0.2, "val_max_drawdown": 0.2}
    assert by_rule["vf_down_low_entropy"] == pytest.approx(
        {"entropy_ratio": 0.1, "vf_coef": 0.7, "vf_phase_lo": 0.6})
    assert d.triggers()["val_sharpe"] == -0.2


def test_hparams_log_changes_effects_truncate_and_read(tmp_path):
    log = A.HparamsLog(tmp_path)
    bad = {**BASE, "val_sharpe": -0.2, "val_max_drawdown": 0.2}
    d1 = A.decide(bad, HP, SHAPES, T)
    log.record(10, 1000, 1, d1, bad)
    better = {**BASE, "val_sharpe": 0.3, "val_max_drawdown": 0.12}
    log.record(20, 2000, 1, A.Decision((), (), (), ()), better)  # the effect; no change
    log.record(30, 3000, 2, A.Decision((), (), (), ()), better)  # nothing to write
    lines = [json.loads(x) for x in (tmp_path / A.HPARAMS_FILE).read_text().splitlines()]
    assert [(r["type"], r["iteration"]) for r in lines] == [("change", 10), ("effect", 20)]
    change, effect = lines
    assert change["phase"] == 1 and change["timestep"] == 1000
    assert {"rule": "poor_performance", "key": "clip", "old": 0.2,
            "new": pytest.approx(0.24)} in change["changes"]
    assert change["metrics"]["val_sharpe"] == -0.2 and change["metrics"]["val_max_drawdown"] == 0.2
    assert effect["of"] == 10
    assert effect["metrics"]["val_sharpe"] == 0.3 and effect["metrics"]["val_max_drawdown"] == 0.12
    assert set(effect["metrics"]) == set(change["metrics"])

    (records,) = A.read(tmp_path)
    assert records["iteration"] == 10 and records["effect"]["iteration"] == 20
    assert records["effect"]["metrics"]["val_sharpe"] == 0.3

    # Resumed from a checkpoint at iteration 15: the effect (iteration 20) is dropped, and the
    # resumed run's next validation writes it again.
    log = A.HparamsLog(tmp_path)
    assert log.truncate(15) == (1, 1)
    assert A.read(tmp_path)[0]["effect"] is None
    again = {**better, "val_sharpe": 0.4}
    d3 = A.decide(again, HP, SHAPES, T)
    log.record(20, 2000, 1, d3, again)
    records = A.read(tmp_path)
    assert records[0]["effect"]["metrics"]["val_sharpe"] == 0.4
    assert [r["iteration"] for r in records] == [10, 20] and records[1]["effect"] is None
    # A torn last line (killed mid-write) is ignored by read and dropped by truncate.
    with (tmp_path / A.HPARAMS_FILE).open("a") as f:
        f.write('{"type": "eff')
    assert len(A.read(tmp_path)) == 2
    assert A.HparamsLog(tmp_path).truncate(100) == (3, 1)
    assert A.read(tmp_path / "absent") == []


def test_a_run_applies_the_rules_and_resumes_bit_exact(tmp_path):
    """--adjust rules in a run that follows a schedule: at each validation walk the changes
    hparams.jsonl records are the values the next iteration uses (a scheduled value through
    its factor, a shape setting through a new program), their effects are recorded at the
    next walk, and a run stopped after the first change and resumed ends bit-identical."""
    import json

    import jax
    import numpy as np

    from jaxtrade import checkpoint as ckpt
    from tests.test_schedule import TINY_RUN, train_main

    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 100000\nent_coef = 0.02\nclip = 0.2\n")

    def run(*extra):
        return train_main(*TINY_RUN, "--eval-every", 2, "--schedule", path, "--adjust", "rules",
                          *extra)

    straight = tmp_path / "straight"
    text = run("--iterations", "6", "--run-dir", str(straight))
    assert "adjust: " in text
    records = A.read(straight)
    assert records and records[0]["iteration"] == 2 and records[0]["effect"]["iteration"] == 4
    rows = {r["iteration"]: r for r in map(json.loads,
                                           (straight / "metrics.jsonl").read_text().splitlines())}
    assert len(records) == 3  # at the walks of iterations 2, 4 and 6 (the last without effect)
    for record in records[:-1]:
        after = rows[record["iteration"] + 1]
        for change in record["changes"]:
            if change["key"] in after:  # a runtime hyperparameter
                np.testing.assert_allclose(after[change["key"]], change["new"], rtol=1e-5)
    stopped = tmp_path / "stopped"
    run("--iterations", "2", "--run-dir", str(stopped))
    run("--iterations", "6", "--resume", "--run-dir", str(stopped))
    a = ckpt.read_params(ckpt.select(straight, 6))
    b = ckpt.read_params(ckpt.select(stopped, 6))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert (stopped / "hparams.jsonl").read_text() == (straight / "hparams.jsonl").read_text()
