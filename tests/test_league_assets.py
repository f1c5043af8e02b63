"""`python -m jaxtrade.league --explorer-assets K`: each explorer trains on its own random K
of the market's assets (a per-member asset mask, vmapped), refiners and the champion on all
of them, every member validated on all of them. Two tiny rounds (test_league's flags, the
set encoder): round 1's explorers on 2 of 4 assets; round 2, without the flag, continues
the best of them as a refiner on every asset. Refusals are one-line errors."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxtrade import archive, league
from tests.test_league import LEAGUE, run_cli, tiny_plan

K = 2  # of TINY's 4 assets
SYMBOLS = ("SYN00", "SYN01", "SYN02", "SYN03")
SUBSETS = [*LEAGUE, "--encoder", "set", "--explorer-assets", K]
REFINER = [*LEAGUE, "--encoder", "set", "--explorers", 0, "--refiners", 1,
           "--refiner-timesteps", 64, "--champions", 0]


@pytest.fixture(scope="module")
def league_run(tmp_path_factory):
    """(league dir, archive, round 1's stdout, every program call: (round, category, the
    env params' asset mask, the members' env weights after the call))."""
    base = tmp_path_factory.mktemp("league_assets")
    where = ["--league-dir", base / "league", "--archive", base / "archive"]
    calls = []
    original = league.LeagueRun.program

    def program(self, k):
        fn = original(self, k)

        def call(pop, env_params):
            out = fn(pop, env_params)
            calls.append((self.plan.run_dir.parent.name, self.plan.run_dir.name,
                          np.asarray(env_params.market.asset_mask),
                          np.asarray(out[0].members.carry.env_state.weights)))
            return out

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(league.LeagueRun, "program", program)
        code, first, err = run_cli([*SUBSETS, *where])
        assert code == 0, err
        code, _, err = run_cli([*REFINER, *where])
        assert code == 0, err
    return base / "league", archive.Archive(base / "archive"), first, calls


def test_subsets_have_k_assets_differ_and_follow_the_seed():
    masks = league.asset_subsets(5, 6, 10, 3)
    assert masks.shape == (6, 10) and masks.dtype == bool
    assert (masks.sum(1) == 3).all()
    assert len({m.tobytes() for m in masks}) > 1  # members draw their own
    assert np.array_equal(masks, league.asset_subsets(5, 6, 10, 3))
    assert not np.array_equal(masks, league.asset_subsets(6, 6, 10, 3))
    one = league.AssetSubsets(masks, [f"S{i}" for i in range(10)])
    assert one.names(0) == [f"S{i}" for i in np.flatnonzero(masks[0])]


def test_each_explorer_trains_on_its_own_k_assets_the_refiner_on_all(league_run):
    league_dir, _, first, calls = league_run
    [rec, _] = league.read_records(league_dir)
    explorers = [c for c in calls if c[:2] == ("round-001", "explorers")]
    assert len(explorers) == 2  # 2 intervals of 1 iteration
    names = rec["categories"]["explorers"]["assets"]
    for _, _, mask, _ in explorers:
        assert mask.ndim == 3 and mask.shape[0] == 2  # [members, bars, assets]
        assert (mask == mask[:, :1]).all()  # the same assets at every bar
        for slot in range(2):
            assert mask[slot, 0].sum() == K
            assert [s for s, m in zip(SYMBOLS, mask[slot, 0], strict=True) if m] == names[slot]
    assert not np.array_equal(explorers[0][2][0], explorers[0][2][1])  # (this seed's draws)
    refiners = [c for c in calls if c[:2] == ("round-002", "refiners")]
    assert refiners and all(c[2].ndim == 2 and c[2].all() for c in refiners)
    assert ("assets: each explorer on its own 2 of the 4 assets (drawn from the category's "
            "seed); refiners and the champion on all 4; every member validated on all 4") in first
    assert (f"explorer assets (2 of 4 each):\n  member 0: {', '.join(names[0])}\n  member 1: "
            f"{', '.join(names[1])}\n") in first


def test_an_explorer_holds_nothing_outside_its_subset(league_run):
    """The members' env weights after every call: 0 on every asset outside the member's
    subset (in every env), some weight on its own assets."""
    *_, calls = league_run
    for _, _, mask, weights in (c for c in calls if c[1] == "explorers"):
        outside = ~mask[:, 0]  # [members, assets]
        assert weights.shape == (2, 8, 5)  # members, envs, assets + cash
        assert not np.any(weights[:, :, :4][np.broadcast_to(outside[:, None], (2, 8, 4))])
        assert weights[:, :, :4].sum() > 0


def test_masked_out_assets_get_no_weight_at_any_step(tmp_path):
    """Both members' envs walked 300 steps of random regimes under `subset_params`: no
    step leaves weight on an asset outside the member's subset; the same walk on every
    asset (the control) holds each of those assets at some step."""
    from jaxtrade.trainer import make_train

    p = tiny_plan(tmp_path, "--encoder", "set")
    trainer = make_train(p.cfg, p.market.with_all_assets(), p.mesh)
    env, full = trainer.env, trainer.env_params
    masks = np.array([[True, False, True, False], [False, True, True, False]])
    members = league.subset_params(full, masks)
    axes = league.subset_axes(members)

    def walk(key, params):
        _, state = env.reset(key, params)

        def step(state, k):
            action = jax.random.randint(k, (), 0, env.num_actions)
            _, state, _, _, info = env.step(k, state, action, params)
            return state, info["weights"]

        return jax.lax.scan(step, state, jax.random.split(key, 300))[1]

    keys = jax.random.split(jax.random.key(0), 2)
    sub = np.asarray(jax.jit(jax.vmap(walk, in_axes=(0, axes)))(keys, members))
    every = np.asarray(jax.jit(jax.vmap(walk, in_axes=(0, None)))(keys, full))
    for slot in range(2):
        out = np.flatnonzero(~masks[slot])
        assert not sub[slot][:, out].any()
        assert (sub[slot][:, np.flatnonzero(masks[slot])] > 0).any()
        assert (every[slot][:, out] > 0).any(axis=0).all()  # the control


def test_the_subsets_are_recorded_in_league_jsonl_and_the_archive(league_run):
    league_dir, a, _, _ = league_run
    first, second = league.read_records(league_dir)
    assert first["explorer_assets"] == K and "explorer_assets" not in second
    names = first["categories"]["explorers"]["assets"]
    assert len(names) == 2 and all(len(n) == K for n in names)
    explorers = [e for e in a.entries() if e["league"]["round"] == 1]
    assert len(explorers) == 2
    for e in explorers:
        assert e["league"]["assets"] == names[e["source"]["slot"]]
    # round 2 (no flag): the refiner continued the best explorer (reading the asset flags
    # it was archived with); archived or rolled back, nothing records assets
    refiners = second["categories"]["refiners"]
    assert second["status"] == "completed" and "assets" not in refiners
    assert refiners["from"] == [max(explorers, key=lambda e: e["val_score"])["id"]]
    assert len(refiners["continued"]) == 1
    for e in a.entries():
        if e["league"]["round"] == 2:
            assert "assets" not in e["league"]


def test_without_the_flag_the_plan_is_left_as_it_is(tmp_path):
    args = league.build_parser().parse_args([str(a) for a in [
        *LEAGUE, "--league-dir", tmp_path / "l", "--archive", tmp_path / "a"]])
    rnd = league.Round(args, league.categories(args))
    p = tiny_plan(tmp_path)
    assert rnd._with_asset_flags(p) is p


@pytest.mark.parametrize("extra, message", [
    ([], "--explorer-assets needs --encoder set: the flat encoder reads every asset's"),
    (["--encoder", "set", "--explorer-assets", 4],
     "--explorer-assets 4: the market has 4 assets; choose K from 1 to 3"),
    (["--encoder", "set", "--explorer-assets", 0], "--explorer-assets must be at least 1"),
])
def test_refused_subsets_are_one_line_errors(extra, message, tmp_path):
    flags = [*LEAGUE, "--explorer-assets", K, *extra, "--league-dir", tmp_path / "l",
             "--archive", tmp_path / "a"]
    code, out, err = run_cli(flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("market, env, message", [
    ("worlds", "portfolio", "--explorer-assets: procedural worlds draw their own assets"),
    ("fixed", "funding", "--explorer-assets: the funding env has no universe of assets"),
])
def test_worlds_and_the_funding_env_are_refused(market, env, message):
    cfg = SimpleNamespace(data=SimpleNamespace(market=market), env=SimpleNamespace(name=env),
                          network=SimpleNamespace(encoder="set"))
    with pytest.raises(league.UsageError, match=message):
        league.check_subsets(cfg, SimpleNamespace(n_assets=4), K)


def fake_archive(root, flagged: dict[str, bool]):
    """An archive of scored models known by their entries and env.json alone: whether each
    reads a flag per asset (`mask_token`)."""
    import json

    models = root / "models"
    (root / "index.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "index.json").write_text(json.dumps({"format": 1, "next_id": len(flagged) + 1}))
    for i, (model_id, flag) in enumerate(flagged.items()):
        (models / model_id).mkdir(parents=True)
        (models / model_id / "entry.json").write_text(json.dumps({
            "id": model_id, "val_score": 2.0 - i, "source": {"run": str(root / "elsewhere")}}))
        layout = {"n_assets": 4, "blocks": [10 + flag, 1], "n_globals": 3,
                  "mask_token": 9 if flag else None}
        (models / model_id / "env.json").write_text(json.dumps({
            "name": "portfolio", "num_actions": 12, "obs_dim": 47, "obs_layout": layout}))
    return root


@pytest.mark.parametrize("extra, flagged, message", [
    (["--explorer-assets", K], {"m0001": False},
     "archived model m0001 reads no flag per asset (trained without --explorer-assets), "
     "this round's models read one (--explorer-assets): continue it in a round without"),
    ([], {"m0001": True, "m0002": False},
     "archived model m0002 reads no flag per asset (trained without --explorer-assets), "
     "this round's models read one (m0001 was archived with them)"),
])
def test_models_with_and_without_asset_flags_do_not_continue_together(extra, flagged,
                                                                      message, tmp_path):
    a = fake_archive(tmp_path / "a", flagged)
    flags = [*LEAGUE, "--encoder", "set", "--refiners", 2, "--champions", 0, *extra,
             "--league-dir", tmp_path / "l", "--archive", a]
    code, out, err = run_cli(flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
