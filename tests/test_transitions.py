"""The plateau rule (`jaxtrade.transitions`) on synthetic validation streams: each trigger,
the threshold modes, cooldown and minimum, the early end over the last 10%, and a state
that survives a JSON round trip mid-cooldown deciding as one that did not."""

import json

import pytest

from jaxtrade.transitions import PlateauRule, PlateauState, observe, start_phase


def run(rule, stream, start=0.0, end=1_000_000.0, state=None):
    """Feed (timestep, score[, metrics]) rows; the timestep the rule fired at and why."""
    state = state or start_phase(start, end)
    for row in stream:
        t, score, *metrics = row
        state = observe(rule, state, t, score, metrics[0] if metrics else None)
        if state.fired:
            return t, state.fired, state
    return None, None, state


def every(step, scores, start=0.0):
    return [(start + step * (i + 1), s) for i, s in enumerate(scores)]


def test_plateau_fires_after_patience_timesteps_without_improvement():
    rule = PlateauRule(patience=30_000, threshold=0.0, threshold_mode="abs", tail=0.0)
    # Improves until 40K, then flat: fires at the first validation 30K after the best.
    stream = every(10_000, [1, 2, 3, 4, 4, 4, 4, 4, 4])
    t, why, state = run(rule, stream)
    assert t == 70_000 and why.startswith("plateau") and state.best_at == 40_000


def test_relative_and_absolute_thresholds():
    small_gains = every(10_000, [1.0, 1.004, 1.008, 1.0095, 1.009, 1.0099])
    rel = PlateauRule(patience=30_000, threshold=0.01, threshold_mode="rel", tail=0.0)
    t, why, _ = run(rel, small_gains)  # never above 1.0 x 1.01: the best stays at 1.0
    assert t == 40_000 and why.startswith("plateau")
    absolute = PlateauRule(patience=30_000, threshold=0.001, threshold_mode="abs", tail=0.0)
    assert run(absolute, small_gains)[0] is None  # improves by > 0.001 until 40K
    # A negative best in max mode: relative to its magnitude, never above -1.0 + 0.01.
    negative = every(10_000, [-1.0, -0.996, -0.993, -0.991, -0.992])
    assert run(rel, negative)[0] == 40_000
    minimise = PlateauRule(mode="min", patience=20_000, threshold=0.0, threshold_mode="abs",
                           tail=0.0)
    assert run(minimise, every(10_000, [5, 4, 3, 3, 3]))[0] == 50_000


def test_targets_end_the_phase_when_all_are_met():
    rule = PlateauRule(patience=1e9, tail=0.0,
                       targets={"val_sharpe": 1.0, "val_max_drawdown": 0.2})
    stream = [(10_000, 1.0, {"val_sharpe": 1.2, "val_max_drawdown": 0.3}),  # drawdown not met
              (20_000, 1.1, {"val_sharpe": 0.9, "val_max_drawdown": 0.1}),  # Sharpe not met
              (30_000, 1.2, {"val_sharpe": 1.1}),  # one missing
              (40_000, 1.3, {"val_sharpe": 1.1, "val_max_drawdown": 0.15})]
    t, why, _ = run(rule, stream)
    assert t == 40_000 and why == "targets met: val_sharpe 1, val_max_drawdown 0.2"


def test_cooldown_and_minimum_hold_the_rule_back():
    flat = every(10_000, [1, 1, 1, 1, 1, 1, 1, 1])
    base = dict(patience=20_000, threshold=0.0, threshold_mode="abs", tail=0.0)
    assert run(PlateauRule(**base), flat)[0] == 30_000
    assert run(PlateauRule(**base, cooldown=55_000), flat)[0] == 60_000
    assert run(PlateauRule(**base, minimum=75_000), flat)[0] == 80_000
    # A phase that starts later counts both from its own start.
    assert run(PlateauRule(**base, cooldown=55_000), every(10_000, [1] * 8, 500_000),
               start=500_000)[0] == 560_000


def test_no_improvement_over_the_last_tenth_ends_the_phase():
    rule = PlateauRule(patience=1e9, threshold=0.0, threshold_mode="abs", tail=0.1)
    # Phase [0, 100K): improves until 85K, then flat; the last 10% is [90K, 100K): at 95K
    # the best is 10K old, the whole tail: fires.
    stream = every(5_000, [1 + i for i in range(17)] + [17, 17, 17])
    t, why, _ = run(rule, stream, end=100_000)
    assert t == 95_000 and why.startswith("no significant improvement over the last 10%")
    # Improving to the end: never.
    assert run(rule, every(5_000, list(range(1, 20))), end=100_000)[0] is None


def test_a_state_resumed_mid_cooldown_decides_as_one_that_was_not_stopped():
    rule = PlateauRule(patience=20_000, threshold=0.01, cooldown=45_000, tail=0.1,
                       targets={"val_sharpe": 3.0})
    stream = [(t, s, {"val_sharpe": s}) for t, s in every(5_000, [0.5, 0.8, 1.0, 1.0, 1.005,
                                                                  0.9, 1.0, 1.0, 0.99, 1.0,
                                                                  1.0, 1.0, 1.0, 1.0])]
    whole = run(rule, stream, end=200_000)
    fired_at = [t for t, *_ in stream].index(whole[0])
    for cut in range(1, fired_at + 1):  # every stop before the rule fires
        _, _, state = run(rule, stream[:cut], end=200_000)
        saved = json.loads(json.dumps(state.to_dict()))
        resumed = run(rule, stream[cut:], state=PlateauState.from_dict(saved))
        assert resumed[:2] == whole[:2], cut
    assert whole[0] == 45_000 and whole[1].startswith("plateau")


def test_a_fired_state_stays_fired_and_bad_scores_are_ignored():
    rule = PlateauRule(patience=10_000, threshold=0.0, threshold_mode="abs", tail=0.0)
    _, _, state = run(rule, [(10_000, 1.0), (20_000, float("nan")), (30_000, 1.0)])
    assert state.fired and state.best == 1.0
    assert observe(rule, state, 40_000, 99.0) is state


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="up"), "mode must be"), (dict(threshold_mode="pct"), "threshold_mode must be"),
    (dict(patience=-1), "patience must be"), (dict(tail=1.0), "tail must be"),
])
def test_bad_rules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlateauRule(**kwargs)
    with pytest.raises(ValueError, match="must end after it starts"):
        start_phase(10, 10)
