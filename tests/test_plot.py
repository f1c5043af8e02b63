"""`python -m jaxtrade.plot`: PNGs of the expected size, overlaid runs, old eval_* columns,
and one-line errors. Metrics files are written here, not by a training run."""

import json
import math
import struct

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from jaxtrade import plot, rows
from jaxtrade.envs import NAMES

N_ROWS = 8
STEPS_PER_ITERATION = 256
VALIDATE_EVERY = 3  # iterations 3 and 6 carry validation columns


def make_rows(seed: int, prefix: str = "val_", n: int = N_ROWS) -> list[dict]:
    """metrics.jsonl rows like training writes, with validation every VALIDATE_EVERY."""
    rng = np.random.default_rng(seed)
    k = 1 + seed  # runs differ, so overlaid lines do not hide each other
    rows = []
    for i in range(1, n + 1):
        freq = rng.dirichlet(np.ones(len(NAMES)))
        row = {
            "iteration": i, "timesteps": i * STEPS_PER_ITERATION, "episodes": i, "sps": 1e3,
            "action_freq": freq.tolist(), "policy_loss": -0.01 * i * k, "value_loss": k / 4**i,
            "entropy": 2.4 - 0.01 * i * k, "approx_kl": 1e-3 * i * k, "clip_frac": 0.01 * i * k,
            "explained_variance": 0.1 * i - 0.5 * k, "cost_mean": 0.002 * k,
            "turnover_mean": 0.5 * k,
            "episode_return_mean": float("nan") if i == 1 else 0.1 * i + seed,
        }
        if i % VALIDATE_EVERY == 0:
            row |= {f"{prefix}score": -10.0 + i + seed, f"{prefix}total_return": 0.01 * i * k,
                    f"{prefix}sharpe": 0.1 * i * k, f"{prefix}action_freq": freq.tolist()}
        rows.append(row)
    return rows


def write_run(path, rows) -> object:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def pixels_of(image: np.ndarray, color) -> int:
    """Pixels of `image` (RGBA floats) within 2/255 of `color`."""
    return int(np.all(np.abs(image[..., :3] - np.asarray(color[:3])) < 2 / 255, axis=-1).sum())


def axis(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def panel_titled(title):
    return next(p for p in plot.PANELS if p.title == title)


def run_main(argv, capsys):
    code = plot.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


# ------------------------------------------------------------------------------ rows
def test_split_row_prefers_val_and_leaves_value_columns_alone():
    training, validation = rows.split_row(
        {"value_loss": 1.0, "val_score": 2.0, "eval_score": 3.0, "eval_sharpe": 4.0})
    assert training == {"value_loss": 1.0}
    assert validation == {"score": 2.0, "sharpe": 4.0}


@pytest.mark.parametrize("prefix", ["val_", "eval_"])
def test_validation_series_has_only_validated_iterations(tmp_path, prefix):
    run = plot.read_run(write_run(tmp_path / "r", make_rows(0, prefix)))
    xs, ys = plot.series(run, panel_titled("validation score"))
    assert xs == [3 * STEPS_PER_ITERATION, 6 * STEPS_PER_ITERATION]
    assert ys == [-7.0, -4.0]


# ----------------------------------------------------------------------------- files
def test_pngs_of_overlaid_runs_land_in_the_first_run_dir(tmp_path, capsys):
    new = write_run(tmp_path / "new", make_rows(0, "val_"))
    old = write_run(tmp_path / "old", make_rows(1, "eval_", n=N_ROWS - 2))
    code, out, err = run_main([new, old], capsys)
    assert (code, err) == (0, [])
    training, actions = new / "plots" / "training.png", new / "plots" / "actions.png"
    assert out == [str(training), str(actions)]
    assert png_size(training) == (1600, 1000)  # 16 x 10 in at 100 dpi
    assert png_size(actions) == (1300, 610)  # 13 in wide; 0.9 in + 2.6 in per run, tall
    # Both runs' lines are drawn, and every regime's stacked area.
    image = imread(training)
    assert all(pixels_of(image, colormaps["tab10"](i)) > 500 for i in range(2))
    image = imread(actions)
    assert all(pixels_of(image, colormaps["tab20"](i)) > 500 for i in plot.ACTION_COLORS)


def test_one_run_goes_to_out_with_a_one_panel_action_figure(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    sizes = []

    def tiny(make):  # the real figure's size, saved small: this test is about paths
        def figure(runs):
            sizes.append(tuple(make(runs).get_size_inches() * plot.DPI))
            return Figure(figsize=(1, 1))
        return figure

    monkeypatch.setattr(plot, "training_figure", tiny(plot.training_figure))
    monkeypatch.setattr(plot, "actions_figure", tiny(plot.actions_figure))
    run_dir = write_run(tmp_path / "alpha", make_rows(0))
    out_dir = tmp_path / "a" / "b"
    code, out, _ = run_main([run_dir, "--out", out_dir], capsys)
    assert code == 0
    assert out == [str(out_dir / "training.png"), str(out_dir / "actions.png")]
    assert all(png_size(out_dir / name) == (100, 100) for name in ("training.png", "actions.png"))
    assert sizes == [(1600, 1000), (1300, 350)]
    assert not (run_dir / "plots").exists()


def test_runs_without_action_freq_get_no_actions_png(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.setattr(plot, "training_figure", lambda runs: Figure(figsize=(1, 1)))
    rows = [{k: v for k, v in r.items() if k != "action_freq"} for r in make_rows(0)]
    run_dir = write_run(tmp_path / "r", rows)
    code, out, _ = run_main([run_dir], capsys)
    assert (code, out) == (0, [str(run_dir / "plots" / "training.png")])


def test_training_figure_overlays_every_run_in_every_panel(tmp_path):
    runs = [plot.read_run(write_run(tmp_path / "new", make_rows(0, "val_"))),
            plot.read_run(write_run(tmp_path / "old", make_rows(1, "eval_")))]
    fig = plot.training_figure(runs)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["new", "old"]
    score = axis(fig, "validation score")
    assert [line.get_label() for line in score.get_lines()] == ["new", "old"]
    assert [list(line.get_ydata()) for line in score.get_lines()] == [[-7.0, -4.0], [-6.0, -3.0]]
    for panel in plot.PANELS:
        lines = axis(fig, panel.title).get_lines()
        assert [ln.get_label() for ln in lines if ln.get_label()[0] != "_"] == ["new", "old"]
    # NaN return (no episode finished yet) stays a gap, not a zero.
    assert math.isnan(axis(fig, "training episode return").get_lines()[0].get_ydata()[0])
    # KL and a value loss spanning 5 decades are on log axes; the rest are linear.
    assert axis(fig, "approximate KL").get_yscale() == "log"
    assert axis(fig, "value loss").get_yscale() == "log"
    assert axis(fig, "policy loss").get_yscale() == "linear"


def test_panels_without_data_say_so(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in make_rows(0)]
    fig = plot.training_figure([plot.read_run(write_run(tmp_path / "r", rows))])
    for title in ("validation score", "validation total return", "validation Sharpe"):
        ax = axis(fig, title)
        assert ax.get_lines() == [] and [t.get_text() for t in ax.texts] == ["not logged"]


def test_actions_figure_stacks_every_regime_per_run(tmp_path):
    runs = [plot.read_run(write_run(tmp_path / f"r{s}", make_rows(s))) for s in range(3)]
    fig = plot.actions_figure(runs)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 3
    assert all(len(ax.collections) == len(NAMES) for ax in panels)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(NAMES[::-1])


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case, message", [
    ("missing_dir", "{run}: no such run directory"),
    ("no_metrics", "{run}/metrics.jsonl: not found"),
    ("empty", "{run}/metrics.jsonl: no rows"),
    ("blank_lines", "{run}/metrics.jsonl: no rows"),
    ("malformed", "{run}/metrics.jsonl:2: malformed JSON (Expecting value at column 1)"),
    ("not_object", "{run}/metrics.jsonl:2: expected a JSON object, got list"),
    ("no_timesteps", "{run}/metrics.jsonl:1: no numeric 'timesteps'"),
    ("short_freq", "{run}/metrics.jsonl:1: action_freq is not a list of 12 shares"),
])
def test_bad_run_is_one_line_and_exit_2(case, message, tmp_path, capsys):
    good = write_run(tmp_path / "good", make_rows(0))
    run = tmp_path / "run"
    lines = [json.dumps(r) for r in make_rows(0, n=2)]
    text = {
        "no_metrics": None, "empty": "", "blank_lines": "\n \n",
        "malformed": lines[0] + "\nnot json\n",
        "not_object": lines[0] + "\n[1, 2]\n",
        "no_timesteps": json.dumps({"iteration": 1}) + "\n",
        "short_freq": json.dumps({"timesteps": 1, "action_freq": [1.0]}) + "\n",
    }.get(case)
    if case != "missing_dir":
        run.mkdir()
    if text is not None:
        (run / "metrics.jsonl").write_text(text)
    code, out, err = run_main([good, run], capsys)
    assert (code, out) == (2, [])
    assert err == ["error: " + message.format(run=run)]
    assert not (good / "plots").exists()


def test_flag_abbreviations_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        plot.main([str(write_run(tmp_path / "r", make_rows(0))), "--ou", str(tmp_path)])
    assert exc.value.code == 2
    assert "unrecognized arguments: --ou" in capsys.readouterr().err


# --------------------------------------------------------------------------- hparams.png
HP_KEYS = ("actor_lr", "critic_lr", "gamma", "gae_lambda", "clip", "ent_coef", "vf_coef",
           "max_grad_norm")


def hparam_rows(n: int = 12, phases: tuple[int, ...] = ()) -> list[dict]:
    """Rows with every runtime hyperparameter; `phases`: the iterations each phase starts
    after (an integer `phase` column when given). actor_lr falls 3 decades."""
    out = []
    for i in range(1, n + 1):
        row = {"iteration": i, "timesteps": i * STEPS_PER_ITERATION,
               "actor_lr": 1e-3 * 10 ** (-3 * i / n), "critic_lr": 9e-4, "gamma": 0.99,
               "gae_lambda": 0.95, "clip": 0.2 - 0.005 * i, "ent_coef": 0.01, "vf_coef": 0.5,
               "max_grad_norm": 0.5 if i < 6 else 0.3}
        if phases:
            row["phase"] = sum(i > p for p in phases)
        out.append(row)
    return out


def adjusted_run(path):
    """A run of 12 iterations in three phases (the second ended early) with two adjustments."""
    run = write_run(path, hparam_rows(phases=(4, 8)))
    (run / plot.PHASES_FILE).write_text("".join(json.dumps(r) + "\n" for r in [
        {"iteration": 4, "timestep": 4 * STEPS_PER_ITERATION, "phase": 1, "name": "refine",
         "ended": "explore", "reason": "end"},
        {"iteration": 8, "timestep": 8 * STEPS_PER_ITERATION, "phase": 2, "name": "exploit",
         "ended": "refine", "reason": "plateau: no improvement over 0.01 for 100 timesteps"},
    ]))
    (run / "hparams.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"type": "change", "iteration": 6, "timestep": 6 * STEPS_PER_ITERATION, "phase": 1,
         "changes": [{"rule": "negative_explained_var", "key": "max_grad_norm", "old": 0.5,
                      "new": 0.3}],
         "fired": [], "metrics": {"explained_variance": -0.9}},
        {"type": "effect", "iteration": 9, "timestep": 9 * STEPS_PER_ITERATION, "of": 6,
         "metrics": {"explained_variance": 0.2}},
        {"type": "change", "iteration": 9, "timestep": 9 * STEPS_PER_ITERATION, "phase": 2,
         "changes": [{"rule": "good_performance", "key": "clip", "old": 0.155, "new": 0.14}],
         "fired": [], "metrics": {"val_sharpe": 1.4}},
    ]))
    return run


def test_hparams_png_marks_phases_and_adjustments(tmp_path, capsys):
    run_dir = adjusted_run(tmp_path / "run")
    code, out, err = run_main([run_dir], capsys)
    assert (code, err) == (0, [])
    path = run_dir / "plots" / "hparams.png"
    assert out == [str(run_dir / "plots" / "training.png"), str(path)]
    assert png_size(path) == (1600, 600)  # 4 x 2 panels of 4 x 2.6 in, 0.8 in of legend
    run = plot.read_run(run_dir)
    assert run.phases == (plot.PhaseStart(4 * STEPS_PER_ITERATION, "refine"),
                          plot.PhaseStart(8 * STEPS_PER_ITERATION, "exploit",
                                          "plateau: no improvement over 0.01 for 100 timesteps"))
    fig = plot.hparams_figure([run])
    assert [ax.get_title() for ax in fig.axes] == list(HP_KEYS)
    clip = axis(fig, "clip")
    vertical = [(ln.get_xdata()[0], ln.get_linestyle()) for ln in clip.get_lines()
                if len(set(ln.get_xdata())) == 1 and len(ln.get_xdata()) == 2]
    assert vertical == [(4 * STEPS_PER_ITERATION, "--"), (8 * STEPS_PER_ITERATION, ":")]
    marks = [ln for ln in clip.get_lines() if ln.get_marker() in ("^", "v")]
    assert [(ln.get_marker(), ln.get_xdata()[0], ln.get_ydata()[0]) for ln in marks] == [
        ("v", 9 * STEPS_PER_ITERATION, 0.14)]
    assert [t.get_text() for t in clip.texts] == ["good_performance"]
    mgn = axis(fig, "max_grad_norm")
    assert [t.get_text() for t in mgn.texts] == ["negative_explained_var"]
    # Phase names along the top row, the early end with its reason's first word.
    assert [t.get_text() for t in axis(fig, "actor_lr").texts] == [
        "refine", "exploit (early: plateau)"]
    assert axis(fig, "actor_lr").get_yscale() == "log"  # 3 decades
    assert axis(fig, "clip").get_yscale() == "linear"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "run" and len(legend) == 4


def test_phase_boundaries_come_from_the_phase_column_without_phases_jsonl(tmp_path):
    run = plot.read_run(write_run(tmp_path / "r", hparam_rows(phases=(4, 8))))
    # Phase 1's first iteration (5) starts where iteration 4 ended.
    assert run.phases == (plot.PhaseStart(4 * STEPS_PER_ITERATION, "phase 1"),
                          plot.PhaseStart(8 * STEPS_PER_ITERATION, "phase 2"))
    assert run.adjustments == ()


def test_a_plain_run_plots_its_hyperparameters_alone(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "max_grad_norm"} for r in hparam_rows()]
    run_dir = write_run(tmp_path / "plain", rows)
    other = write_run(tmp_path / "other", hparam_rows())
    fig = plot.hparams_figure([plot.read_run(run_dir), plot.read_run(other)])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list(HP_KEYS)
    for ax in fig.axes:
        assert not ax.texts and all(ln.get_marker() not in ("^", "v") for ln in ax.get_lines())
    assert [len(ax.get_lines()) for ax in fig.axes] == [2] * 7 + [1]  # plain has no clip norm
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["plain", "other"]
    fig = plot.hparams_figure([plot.read_run(run_dir)])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list(HP_KEYS[:-1])
    assert plot.hparams_figsize(7) == (16.0, 6.0)


def test_a_bad_phases_file_is_one_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "r", hparam_rows())
    (run_dir / plot.PHASES_FILE).write_text('{"iteration": 4}\n')
    code, out, err = run_main([run_dir], capsys)
    assert (code, out) == (2, [])
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir / plot.PHASES_FILE}: not")
