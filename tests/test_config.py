"""Config: presets, TOML and override parsing, validation messages, derived sizes."""

import dataclasses
import datetime as dt
import inspect
import json
import pathlib

import pytest

from jaxtrade import config as C
from jaxtrade.config import Config, ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
PRESETS = sorted(CONFIGS.glob("*.toml"))
SECTIONS = ("data", "env", "network", "ppo", "run")
# Sub-tables too.
TABLES = ("data", "data.worlds", "env", "env.portfolio", "env.funding", "network", "ppo", "run")


def leaves(table: str) -> list[dataclasses.Field]:
    """The fields of a (sub-)table that are settings, not sub-tables of their own."""
    return [f for f in dataclasses.fields(C.section_of(Config(), table))
            if f"{table}.{f.name}" not in C._SECTIONS]


def write(tmp_path, text: str) -> pathlib.Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def custom() -> Config:
    """A config with every kind of value away from its default."""
    return C.apply_overrides(
        Config(),
        'symbols=[AAA, BBB],start="2012-01-01",split_dates=[2015-06-01, 2016-06-01],n_envs=256,'
        "gamma=0.995,clip_value=true,precision=bf16,timesteps=100000,run_dir=ckpt/x,"
        "synthetic_seed=7,dropout=0",
    )


# --- structure --------------------------------------------------------------


def test_bare_field_names_are_unique_across_sections():
    per_section = [f.name for s in TABLES for f in leaves(s)]
    assert len(per_section) == len(set(per_section)), "a bare key would be ambiguous"
    assert C.field_names() == per_section
    assert [f.name for f in dataclasses.fields(Config)] == list(SECTIONS)
    assert list(C._SECTIONS) == list(TABLES)


@pytest.mark.parametrize("section", SECTIONS)
def test_configs_are_frozen(section):
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, section, None)
    sub = getattr(cfg, section)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(sub, dataclasses.fields(sub)[0].name, 1)


def test_defaults_match_the_library_they_configure():
    from jaxtrade.data import SyntheticConfig, build_market, load_market
    from jaxtrade.envs import PortfolioEnv

    def defaults(fn):
        return {
            k: p.default
            for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    env_defaults = defaults(PortfolioEnv.make_params)
    kwargs = C.EnvConfig().params_kwargs()
    assert set(kwargs) == set(env_defaults) - {"split", "start"}
    assert kwargs == {k: env_defaults[k] for k in kwargs}

    data = C.DataConfig()
    assert data.max_fill == defaults(load_market)["max_fill"]
    assert data.val_fraction == defaults(build_market)["val_fraction"]
    assert data.test_fraction == defaults(build_market)["test_fraction"]
    assert data.split_dates == defaults(build_market)["split_dates"]
    assert C.RunConfig().early_stop == 0
    assert C.default_episode_length("portfolio") == defaults(build_market)["episode_length"]
    assert data.synthetic() == SyntheticConfig()
    custom_market = dataclasses.replace(
        data, n_assets=5, n_bars=400, synthetic_seed=3, signal_strength=0.0
    ).synthetic()
    assert custom_market == SyntheticConfig(n_assets=5, n_bars=400, seed=3, signal_strength=0.0)


# --- dict / JSON round trip ---------------------------------------------------


@pytest.mark.parametrize("cfg", [Config(), custom()], ids=["default", "custom"])
def test_to_dict_round_trips_through_json(cfg):
    d = json.loads(json.dumps(C.to_dict(cfg)))
    assert C.from_dict(d) == cfg
    assert set(d) == set(SECTIONS)


def test_to_dict_uses_json_types_only():
    d = C.to_dict(custom())
    assert d["data"]["symbols"] == ["AAA", "BBB"]
    assert d["data"]["split_dates"] == ["2015-06-01", "2016-06-01"]
    assert json.loads(json.dumps(d)) == d


def test_from_dict_keeps_base_values_it_does_not_mention():
    base = C.with_values(Config(), hidden_dim=32, n_steps=16)
    cfg = C.from_dict({"ppo": {"n_steps": 8}}, base)
    assert cfg.network.hidden_dim == 32 and cfg.ppo.n_steps == 8
    assert base.ppo.n_steps == 16  # the base is untouched


# --- TOML loading ------------------------------------------------------------


def test_load_coerces_ints_lists_and_dates(tmp_path):
    path = write(
        tmp_path,
        '[ppo]\ngamma = 1\nn_envs = 128\n[data]\nsymbols = ["X", "Y"]\nstart = 2011-02-03\n'
        "[run]\ntimesteps = 2e6\n",
    )
    cfg = C.load(path)
    assert cfg.ppo.gamma == 1.0 and type(cfg.ppo.gamma) is float
    assert cfg.data.symbols == ("X", "Y")
    assert cfg.data.start == "2011-02-03"
    assert cfg.run.timesteps == 2_000_000 and type(cfg.run.timesteps) is int
    assert cfg.ppo.n_envs == 128


def test_load_rejects_unknown_section_naming_file_and_valid_sections(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 1.0\n")
    with pytest.raises(ConfigError) as e:
        C.load(path)
    msg = str(e.value)
    assert msg == (f"{path}: unknown section [optim]; valid sections: data, data.worlds, env, "
                   f"env.portfolio, env.funding, network, ppo, run")


def test_load_rejects_unknown_key_listing_the_section_keys(tmp_path):
    path = write(tmp_path, "[network]\nhiden_dim = 64\n")
    with pytest.raises(ConfigError) as e:
        C.load(path)
    assert str(e.value) == (
        f"{path}: unknown key 'hiden_dim' in [network] (did you mean 'hidden_dim'?); "
        "valid keys: kind, encoder, hidden_dim, n_gru_layers, n_layers, n_heads, head_dim, "
        "context, dropout, precision, remat"
    )


def test_load_names_the_right_section_for_a_misplaced_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'n_envs' belongs in \[ppo\]"):
        C.load(write(tmp_path, "[network]\nn_envs = 64\n"))
    with pytest.raises(ConfigError, match=r"must be inside a section: put it under \[ppo\]"):
        C.load(write(tmp_path, "n_envs = 64\n"))


@pytest.mark.parametrize(
    "body, expected",
    [
        ('[ppo]\nn_envs = "many"', "[ppo] n_envs: expected int or none, got str 'many'"),
        ("[ppo]\nn_steps = 1.5", "[ppo] n_steps: expected int, got float 1.5"),
        ("[ppo]\nclip_value = 1", "[ppo] clip_value: expected bool, got int 1"),
        ("[ppo]\ngamma = true", "[ppo] gamma: expected float, got bool True"),
        ("[data]\nsymbols = [1, 2]", "[data] symbols: expected list of str or none, got list"),
        ("[network]\nprecision = 16", "[network] precision: expected str, got int 16"),
        ("[ppo]\nn_steps = [1]", "[ppo] n_steps: expected int, got list [1]"),
    ],
)
def test_load_rejects_wrong_types_naming_key_type_and_value(tmp_path, body, expected):
    path = write(tmp_path, body + "\n")
    with pytest.raises(ConfigError) as e:
        C.load(path)
    assert str(e.value).startswith(f"{path}: {expected}")


def test_load_reports_bad_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "[ppo\n")
    with pytest.raises(ConfigError, match=r"run\.toml: invalid TOML"):
        C.load_toml(path)
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        C.load_toml(tmp_path / "nope.toml")


def test_error_messages_are_one_line(tmp_path):
    for text in ("[x]\n", "[ppo]\nfoo = 1\n", '[ppo]\nn_envs = "a"\n'):
        with pytest.raises(ConfigError) as e:
            C.load(write(tmp_path, text))
        assert "\n" not in str(e.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- presets -----------------------------------------------------------------


def test_all_presets_are_present():
    names = {p.name for p in PRESETS}
    assert {"default.toml", "cpu-small.toml", "high-vram.toml", "low-vram.toml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_loads_and_validates(path):
    assert path.read_text().startswith("# "), "a preset opens with a comment on what it is for"
    cfg = C.load(path)
    for platform in ("cpu", "gpu"):
        C.validate(C.resolve(cfg, platform))
    assert C.total_iterations(C.resolve(cfg, "cpu")) >= 1


def test_default_preset_spells_out_every_default():
    raw = C.load_toml(CONFIGS / "default.toml")
    assert C.from_dict(raw) == Config()

    def keys(table):
        for k, v in table.items():
            yield from keys(v) if isinstance(v, dict) else [k]

    given = set(keys(raw))
    unset = {k for k, v in C.values_of(Config()).items() if v is None}
    assert given | unset == set(C.field_names())
    assert not given & unset
    text = (CONFIGS / "default.toml").read_text()
    for key in unset:  # unset keys are documented as commented-out examples
        assert f"\n# {key} = " in text, key


def test_preset_values():
    small = C.load(CONFIGS / "cpu-small.toml")
    assert (small.network.hidden_dim, small.network.n_gru_layers) == (64, 1)
    assert small.network.precision == "fp32"
    assert (small.ppo.n_envs, small.ppo.n_steps, small.ppo.n_minibatches) == (64, 64, 2)
    high = C.load(CONFIGS / "high-vram.toml")
    assert (high.ppo.n_envs, high.ppo.n_steps, high.network.precision) == (65536, 512, "bf16")
    assert high.ppo.n_minibatches == 32
    low = C.load(CONFIGS / "low-vram.toml")
    assert (low.ppo.n_envs, low.ppo.n_steps, low.ppo.n_minibatches) == (8192, 256, 16)
    # The --high-vram/--low-vram flags' built-in presets are the files' values.
    assert C.preset(Config(), "high-vram") == high
    assert C.preset(Config(), "low-vram") == low
    with pytest.raises(ConfigError, match="unknown preset 'mid-vram'"):
        C.preset(Config(), "mid-vram")


# --- overrides ---------------------------------------------------------------


def test_overrides_bare_and_dotted_keys():
    cfg = C.apply_overrides(Config(), "n_envs=512, ppo.n_steps=32,network.hidden_dim=64")
    assert (cfg.ppo.n_envs, cfg.ppo.n_steps, cfg.network.hidden_dim) == (512, 32, 64)


def test_overrides_parse_toml_scalars():
    cfg = C.apply_overrides(
        Config(),
        'clip_value=true,gamma=1,actor_lr=1e-3,run_dir="ckpt/a,b",precision=bf16,'
        "path=data/prices.csv,end=2020-12-31",
    )
    assert cfg.ppo.clip_value is True
    assert cfg.ppo.gamma == 1.0 and type(cfg.ppo.gamma) is float
    assert cfg.ppo.actor_lr == 1e-3
    assert cfg.run.run_dir == "ckpt/a,b"  # a quoted comma does not split
    assert cfg.network.precision == "bf16"  # bare string
    assert cfg.data.path == "data/prices.csv"
    assert cfg.data.end == "2020-12-31"  # a TOML date becomes its ISO string


def test_overrides_none_and_lists():
    base = C.apply_overrides(Config(), "n_envs=64,symbols=AAA,timesteps=1000")
    assert base.data.symbols == ("AAA",)
    cfg = C.apply_overrides(base, "n_envs=none,timesteps=NULL,symbols=[AAA, 'B,B', CCC]")
    assert cfg.ppo.n_envs is None and cfg.run.timesteps is None
    assert cfg.data.symbols == ("AAA", "B,B", "CCC")
    assert C.apply_overrides(base, "symbols=null").data.symbols is None


def test_overrides_accept_lists_dashes_and_empty_items():
    cfg = C.apply_overrides(Config(), ["n-envs=128", "n_steps=8,", ""])
    assert (cfg.ppo.n_envs, cfg.ppo.n_steps) == (128, 8)
    assert C.apply_overrides(Config(), "") == Config()


def test_overrides_apply_left_to_right():
    assert C.apply_overrides(Config(), "n_steps=8,ppo.n_steps=16").ppo.n_steps == 16


def test_override_unknown_key_lists_all_valid_keys():
    with pytest.raises(ConfigError) as e:
        C.apply_overrides(Config(), "n_steps=8,nenvs=3")
    msg = str(e.value)
    assert msg.startswith("override 'nenvs=3': unknown key 'nenvs' (did you mean 'n_envs'?)")
    assert msg.endswith("valid keys: " + ", ".join(C.field_names()))


def test_override_errors():
    with pytest.raises(ConfigError, match=r"unknown key 'n_envs' in \[network\]"):
        C.apply_overrides(Config(), "network.n_envs=3")
    with pytest.raises(ConfigError,
                       match="unknown section 'optim'; valid sections: data, data.worlds, env"):
        C.apply_overrides(Config(), "optim.lr=3")
    with pytest.raises(ConfigError, match="override 'n_envs': expected key=value"):
        C.apply_overrides(Config(), "n_envs")
    with pytest.raises(ConfigError) as e:
        C.apply_overrides(Config(), "n_envs=lots")
    assert str(e.value) == (
        "override 'n_envs=lots': [ppo] n_envs: expected int or none, got str 'lots'"
    )
    with pytest.raises(ConfigError, match="n_steps: expected int, got none"):
        C.apply_overrides(Config(), "n_steps=none")


def test_with_values_skips_none_and_checks_types():
    cfg = C.with_values(Config(), n_envs=256, seed=None, gamma=1, symbols=["A"])
    assert cfg.ppo.n_envs == 256 and cfg.run.seed == 0
    assert cfg.ppo.gamma == 1.0 and cfg.data.symbols == ("A",)
    assert C.with_values(cfg) == cfg
    with pytest.raises(ConfigError, match="flag n_env: unknown key 'n_env'"):
        C.with_values(cfg, n_env=3)
    with pytest.raises(ConfigError, match="flag n_steps: .*expected int, got str 'x'"):
        C.with_values(cfg, n_steps="x")


# --- validation --------------------------------------------------------------


def invalid(overrides: str, n_devices: int = 1) -> str:
    with pytest.raises(ConfigError) as e:
        C.validate(C.apply_overrides(Config(), overrides), n_devices=n_devices)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_validate_accepts_defaults_and_returns_the_config():
    cfg = Config()
    assert C.validate(cfg) is cfg  # n_envs unset: divisibility is checked after resolve
    assert C.validate(C.resolve(cfg, "cpu"), n_devices=4) == C.resolve(cfg, "cpu")
    C.validate(C.apply_overrides(cfg, "critic_epochs=0,gamma=1,gae_lambda=0,dropout=0"))


def test_validate_suggests_nearest_valid_n_envs():
    msg = invalid("n_envs=100,n_minibatches=8")
    assert msg == "invalid config: n_envs=100 must be a multiple of n_minibatches=8 (try 96 or 104)"
    msg = invalid("n_envs=100,n_minibatches=8", n_devices=2)
    assert "multiple of n_minibatches=8 x 2 devices = 16 (try 96 or 112)" in msg
    assert "(try 8)" in invalid("n_envs=3,n_minibatches=8")
    C.validate(C.apply_overrides(Config(), "n_envs=96,n_minibatches=8"), n_devices=4)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("n_envs=0", "n_envs=0 must be >= 1"),
        ("n_steps=0", "n_steps=0 must be >= 1"),
        ("hidden_dim=1", "hidden_dim=1 must be >= 2"),
        ("n_minibatches=0", "n_minibatches=0 must be >= 1"),
        ("ppo_epochs=0", "ppo_epochs=0 must be >= 1"),
        ("critic_epochs=-1", "critic_epochs=-1 must be >= 0"),
        ("gamma=1.01", "gamma=1.01 must be in [0, 1]"),
        ("gae_lambda=-0.1", "gae_lambda=-0.1 must be in [0, 1]"),
        ("clip=0", "clip=0.0 must be > 0"),
        ("actor_lr=0", "actor_lr=0.0 must be > 0"),
        ("critic_lr=-1e-3", "critic_lr=-0.001 must be > 0"),
        ("dropout=1", "dropout=1.0 must be in [0, 1)"),
        ("val_fraction=1", "val_fraction=1.0 must be in [0, 1)"),
        ("test_fraction=-0.1", "test_fraction=-0.1 must be in [0, 1)"),
        ("val_fraction=0.5,test_fraction=0.5", "val_fraction + test_fraction=1.0 must be < 1"),
        ('split_dates=["2020-01-01"]', "split_dates=('2020-01-01',) must be two dates"),
        ("early_stop=-1", "early_stop=-1 must be >= 0"),
        ("slippage=0.2", "slippage=0.2 must be in [0, 0.1)"),
        ("ruin_fraction=1", "ruin_fraction=1.0 must be in [0, 1)"),
        ("precision=fp16", "precision='fp16' must be one of auto|fp32|bf16"),
        ("kind=lstm", "kind='lstm' must be one of gru|mlp"),
        ("name=stocks", "name='stocks' must be a registered env: "),
        ("episode_length=0", "episode_length=0 must be >= 1"),
        ("timesteps=0", "timesteps=0 must be >= 1"),
        ("iterations_per_call=0", "iterations_per_call=0 must be >= 1"),
        ("verbosity=3", "verbosity=3 must be 0, 1 or 2"),
        ("symbols=[A, B, A]", "must be unique (repeated: A)"),
    ],
)
def test_validate_rejects_impossible_settings(override, expected):
    assert expected in invalid(override)


def test_validate_lists_every_problem_on_one_line():
    msg = invalid("gamma=2,clip=0,n_envs=10")
    assert msg.startswith("invalid config: ")
    assert msg.count("; ") == 2 and "gamma=2.0" in msg and "clip=0.0" in msg and "n_envs=10" in msg


def test_validate_catches_wrong_types_set_in_code():
    bad = dataclasses.replace(Config(), ppo=C.PPOConfig(n_envs=64.0))
    with pytest.raises(ConfigError, match=r"\[ppo\] n_envs: expected int or none, got 64.0"):
        C.validate(bad)


# --- machine-dependent settings and derived sizes -----------------------------


@pytest.mark.parametrize(
    "platform, n_envs, dtype",
    [("gpu", 65536, "bfloat16"), ("cuda", 65536, "bfloat16"), ("ROCM", 65536, "bfloat16"),
     ("tpu", 65536, "bfloat16"), ("cpu", 64, "float32")],
)  # fmt: skip
def test_platform_defaults(platform, n_envs, dtype):
    assert C.default_n_envs(platform) == n_envs
    cfg = C.resolve(Config(), platform)
    assert cfg.ppo.n_envs == n_envs and cfg.network.precision == "auto"
    assert cfg.network.compute_dtype(platform).name == dtype
    assert C.compute_dtype("fp32", platform).name == "float32"
    assert C.compute_dtype("bf16", platform).name == "bfloat16"


def test_resolve_keeps_explicit_values_and_rejects_unknown_platforms():
    cfg = C.with_values(Config(), n_envs=1024, precision="fp32", market="fixed",
                        episode_length=256)
    assert C.resolve(cfg, "gpu") is cfg
    with pytest.raises(ConfigError, match="unknown platform 'metal'; expected one of gpu"):
        C.default_n_envs("metal")
    with pytest.raises(ConfigError, match="precision must be one of auto|fp32|bf16"):
        C.compute_dtype("fp16", "cpu")


def test_resolve_run_dir():
    now = dt.datetime(2024, 1, 2, 4, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    cfg = C.resolve_run_dir(Config(), now=now, name="cpu small")
    assert cfg.run.run_dir == "ckpt/20240102-030405-cpu-small"  # UTC
    assert C.resolve_run_dir(cfg, now=now, name="other") is cfg  # a set run_dir stays
    hashed = C.resolve_run_dir(Config(), now=now).run.run_dir
    assert hashed == C.resolve_run_dir(Config(), now=now).run.run_dir
    assert hashed != C.resolve_run_dir(C.with_values(Config(), seed=1), now=now).run.run_dir
    assert Config().run.run_dir is None  # nothing was mutated


def sized(**run) -> Config:
    """n_envs=64 x n_steps=128 = 8192 steps per iteration, episode_length 256."""
    return C.with_values(Config(), n_envs=64, n_steps=128, **run)


def test_total_iterations_priority_and_rounding():
    assert C.steps_per_iteration(sized()) == 8192
    assert C.total_iterations(sized()) == 245  # ceil(2_000_000 / 8192) = ceil(244.1)
    assert C.total_iterations(sized(iterations=7)) == 7
    assert C.total_iterations(sized(episodes=100, iterations=7)) == 4  # 25600 / 8192 = 3.1
    assert C.total_iterations(sized(timesteps=16384, episodes=100, iterations=7)) == 2
    assert C.total_iterations(sized(timesteps=16385)) == 3
    assert C.total_iterations(sized(timesteps=1)) == 1
    assert C.total_iterations(C.with_values(sized(episodes=64), episode_length=128)) == 1


def test_episode_length_defaults_to_the_envs_own(tmp_path):
    funding = C.with_values(Config(), name="funding")
    assert Config().env.episode_length is None and funding.env.episode_length is None
    assert C.resolve(Config(), "cpu").env.episode_length == 256
    resolved = C.resolve(funding, "cpu")
    assert resolved.env.episode_length == 24  # hourly steps: one trading day
    # Unresolved, the derived sizes read the env's own too.
    assert funding.env.params_kwargs()["episode_length"] == 24
    per_iteration = C.with_values(funding, n_envs=64, n_steps=24)  # 64 envs x one day
    assert C.total_iterations(C.with_values(per_iteration, episodes=640)) == 10
    # An explicit value wins, whichever way it comes and whatever it equals.
    assert C.resolve(C.with_values(funding, episode_length=256), "cpu").env.episode_length == 256
    assert C.resolve(C.apply_overrides(funding, "episode_length=48"),
                     "cpu").env.episode_length == 48
    toml = C.load(write(tmp_path, '[env]\nname = "funding"\nepisode_length = 256\n'))
    assert C.resolve(toml, "cpu").env.episode_length == 256
    toml = C.load(write(tmp_path, '[env]\nname = "funding"\n'))
    assert C.resolve(toml, "cpu").env.episode_length == 24
    # The saved config records the length used, and a resumed run reads it back as given.
    saved = C.from_saved(json.loads(json.dumps(C.to_dict(resolved))))
    assert saved == resolved and C.resolve(saved, "cpu") == saved
    # An unknown env keeps it unset, for validate to name the env.
    unknown = C.apply_overrides(Config(), "name=stocks")
    assert C.resolve(unknown, "cpu").env.episode_length is None
    with pytest.raises(ConfigError, match="name='stocks' must be a registered env"):
        C.validate(C.resolve(unknown, "cpu"))


def test_total_iterations_needs_resolved_n_envs():
    with pytest.raises(ConfigError, match=r"n_envs is not set; call resolve\(cfg, platform\)"):
        C.total_iterations(Config())
    assert C.total_iterations(C.resolve(Config(), "cpu")) == 245


def test_envs_per_minibatch():
    assert C.envs_per_minibatch(sized(), n_devices=4) == 4  # 64 / (4 devices x 4 minibatches)


@pytest.mark.parametrize("key, new", [("eval_fraction", "val_fraction and test_fraction"),
                                      ("split_date", "split_dates")])
def test_keys_of_older_versions_name_what_replaced_them(key, new, tmp_path):
    with pytest.raises(ConfigError, match=f"override '{key}=0.2': '{key}' was replaced by {new}"):
        C.apply_overrides(Config(), f"{key}=0.2")
    path = write(tmp_path, f"[data]\n{key} = 0.2\n")
    with pytest.raises(ConfigError, match=f"{path}: '{key}' was replaced by {new}"):
        C.load(path)


# --- settings: each field's facts, declared once --------------------------------------------


def test_every_field_is_a_setting_with_a_flag_or_explicitly_none():
    for section in TABLES:
        for f in leaves(section):
            meta = f.metadata.get("jaxtrade")
            assert isinstance(meta, C.Setting), f"{f.name} is not declared with setting()"
            # setting(flag=True) (the default) is --field-name; no flag is flag=False, given
            assert meta.flag is True or meta.flag is False or meta.flag.startswith("--"), f.name
            assert meta.help, f.name
    assert list(C.SETTINGS) == C.field_names()
    flagless = {k for k, s in C.SETTINGS.items() if s.flag is None}
    assert set(C.FLAG_OF) == set(C.field_names()) - flagless
    assert {C.FLAG_OF[k] for k in ("path", "name", "kind", "n_envs")} == {
        "--data", "--env", "--network", "--n-envs"}


def test_the_train_parser_has_exactly_the_flags_of_the_settings():
    from jaxtrade import train

    actions = {a.dest: a for a in train.build_parser()._actions}
    for key, flag in C.FLAG_OF.items():
        assert actions[key].option_strings == [flag], key
        assert actions[key].help == C.flag_help(key)
    # A flag-less field is not set by a flag of its own name by mistake.
    assert not {k for k in C.field_names() if k not in C.FLAG_OF} & set(actions)
    assert train.FLAG_FIELDS == tuple(C.FLAG_OF) and train.FLAG_OF is C.FLAG_OF


def test_flag_help_shows_the_default():
    assert C.flag_help("gamma") == "discount [0.99]"
    assert C.flag_help("actor_lr") == "actor chain learning rate [3e-4]"
    assert C.flag_help("dropout") == "dropout rate [0.0]"
    assert C.flag_help("timesteps") == "train for this many env steps"  # default None: none
    assert C.flag_help("run_dir").endswith("[ckpt/<UTC time>-<preset name or config hash>]")


def test_flag_values_split_lists():
    import argparse

    parser = argparse.ArgumentParser()
    C.add_flags(parser, ("symbols", "n_steps", "precision"))
    args = parser.parse_args(["--symbols", "A, B,,C", "--n-steps", "8"])
    assert C.flag_values(args, ("symbols", "n_steps", "precision")) == {
        "symbols": ("A", "B", "C"), "n_steps": 8, "precision": None}
    with pytest.raises(SystemExit):  # a static OneOf rule is the flag's choices
        parser.parse_args(["--precision", "fp16"])
    with pytest.raises(ValueError, match="n_assets has no CLI flag"):
        C.add_flags(parser, ("n_assets",))


def test_runtime_hyperparameters_are_the_fields_of_hparams():
    from jaxtrade.trainer import HPARAM_NAMES, HParams

    assert {f.name for f in dataclasses.fields(HParams)} == set(C.RUNTIME_FIELDS)
    assert HPARAM_NAMES == C.RUNTIME_FIELDS
    assert set(C.RUNTIME_FIELDS) == {
        "actor_lr", "critic_lr", "ent_coef", "clip", "vf_coef", "gae_lambda", "gamma",
        "max_grad_norm", "dropout"}
    # HParams' field order is the saved state's: a new hyperparameter comes last.
    assert [f.name for f in dataclasses.fields(HParams)][-2:] == ["max_grad_norm", "dropout"]
    assert C.RUNTIME_FIELDS[-1] == "dropout"
    assert not set(C.RUNTIME_FIELDS) & set(C.SHAPE_FIELDS)


def changed(key: str):
    """A value of field `key` other than its default, of the right type (and within the
    field's range, for numbers)."""
    value = C.default_of(key)
    base = C._base_type(C._FIELD_TYPES[C._FIELD_SECTION[key]][key])
    rule = C.SETTINGS[key].rule
    if base is bool:
        return not value
    if base is int:
        return (value or 0) + 3
    if base is float:
        return (value + rule.high) / 2 if isinstance(rule, C.Between) else value + 0.125
    if base is str:
        return f"{value}-other"
    return ("X", "Y")  # a list of str


@pytest.mark.parametrize("key", C.SHAPE_FIELDS)
def test_every_shape_field_is_refused_on_resume_naming_its_flag(key):
    from jaxtrade import checkpoint as ckpt

    saved = Config()
    new = C.with_values(saved, **{key: changed(key)})
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.resume_changes(saved, new)
    shown = f"{C.FLAG_OF[key]} " if key in C.FLAG_OF else f"{key}="
    assert str(e.value).startswith(shown), str(e.value)
    assert "would change array shapes or the market" in str(e.value)
    assert ckpt.SHAPE_FIELDS == C.SHAPE_FIELDS


def test_every_other_field_may_change_on_resume():
    from jaxtrade import checkpoint as ckpt

    saved = Config()
    for key in C.field_names():
        if key in C.SHAPE_FIELDS or key in ("seed", "run_dir"):
            continue
        changes = ckpt.resume_changes(saved, C.with_values(saved, **{key: changed(key)}))
        assert [c.key for c in changes] == [key]
        assert (key in ckpt.hparam_values(changes)) == (key in C.RUNTIME_FIELDS)


def test_make_params_takes_env_config_defaults_and_rules(small_env):
    from jaxtrade.envs import PortfolioEnv

    signature = inspect.signature(PortfolioEnv.make_params).parameters
    env = C.EnvConfig()
    for key, value in env.params_kwargs().items():
        assert signature[key].default == value, key
        rule = C.SETTINGS[key].rule
        assert rule is not None and rule.holds(value)
        bad = "bad" if isinstance(value, str) else 0 if isinstance(value, int) else -1.0
        assert not rule.holds(bad)
        with pytest.raises(ValueError) as e:
            small_env.make_params(**{key: bad})
        assert str(e.value) == f"{key} must be {rule}, got {bad}"
        # validate names the same rule
        assert f"{key}={bad!r} must be {rule}" in invalid(f"{key}={bad}")
    # The tops of the ranges are the same for both too.
    for key in ("slippage", "spread", "impact", "ruin_fraction"):
        top = C.SETTINGS[key].rule.high
        with pytest.raises(ValueError, match=f"{key} must be in"):
            small_env.make_params(**{key: top})
        assert f"{key}={float(top)!r} must be in [0, {top:g})" in invalid(f"{key}={top}")


def test_fields_a_resume_may_change_keep_every_shape(small_market):
    """A field not marked shape=True changes no array of the saved state or the env params."""
    import jax

    from jaxtrade.trainer import make_train

    def shapes(cfg: Config):
        trainer = make_train(cfg, small_market)
        state = jax.eval_shape(trainer.init, jax.random.key(0))
        return jax.tree.map(lambda x: (x.shape, x.dtype), (state, trainer.env_params))

    tiny = dict(hidden_dim=8, n_gru_layers=1, n_envs=8, n_steps=8, n_minibatches=2,
                episode_length=32, precision="fp32")
    base = C.resolve(C.with_values(Config(), **tiny), "cpu")
    reference = shapes(base)
    sections = ("env", "network", "ppo")  # [data] fields all fix the market; [run] none
    keys = [k for k in C.field_names()
            if C._FIELD_SECTION[k] in sections and k not in C.SHAPE_FIELDS]
    assert len(keys) > 10
    for key in keys:
        cfg = C.validate(C.with_values(base, **{key: changed(key)}))
        assert shapes(cfg) == reference, f"{key} changes shapes: mark it setting(shape=True)"


# --- per-env sections and arrays of tables ------------------------------------


def test_env_settings_sit_in_the_envs_own_table(tmp_path):
    cfg = C.load(write(tmp_path, "[env]\nepisode_length = 64\n[env.portfolio]\nslippage = 0.001\n"))
    assert cfg.env.portfolio.slippage == 0.001 and cfg.env.episode_length == 64
    assert cfg.env.section() is cfg.env.portfolio
    assert cfg.env.params_kwargs() == {"episode_length": 64,
                                       **dataclasses.asdict(cfg.env.portfolio)}
    # Bare and dotted overrides reach the sub-table.
    over = C.apply_overrides(cfg, "spread=0.003,env.portfolio.impact=0.02")
    assert (over.env.portfolio.spread, over.env.portfolio.impact) == (0.003, 0.02)
    assert C.from_dict(json.loads(json.dumps(C.to_dict(over)))) == over


def test_an_env_without_a_table_gets_no_other_envs_settings():
    import tests.envs.masked  # noqa: F401  (registers masked-walk)

    cfg = C.apply_overrides(Config(), "slippage=0.001")
    other = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, name="masked-walk"))
    assert other.env.section() is None
    assert other.env.params_kwargs() == {"episode_length": 256}  # the base class's default


@pytest.mark.parametrize(("text", "message"), [
    ("[env]\nslippage = 0.001\n",
     "unknown key 'slippage' in [env] ('slippage' belongs in [env.portfolio]); valid keys: "
     "name, episode_length, [env.portfolio]"),
    ("[env.fundng]\nleverage_max = 3\n",
     "unknown section [env.fundng]; valid sections: data, data.worlds, env, env.portfolio, "
     "env.funding, network, ppo, run"),
    ("[env.funding]\nleverage = 3\n",
     "unknown key 'leverage' in [env.funding] (did you mean 'leverage_min'?)"),
    ("[env]\nportfolio = 3\n", "[env.portfolio] must be a table of keys, got 3"),
    ("[env.portfolio]\nslipage = 0.1\n",
     "unknown key 'slipage' in [env.portfolio] (did you mean 'slippage'?)"),
])
def test_env_tables_are_checked(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        C.load(path)
    assert str(e.value).startswith(f"{path}: {message}")


def test_saved_configs_of_the_flat_env_layout_still_load():
    old = C.to_dict(C.apply_overrides(Config(), "slippage=0.002,ruin_fraction=0.3"))
    old["env"] = {"name": "portfolio", "episode_length": 256, **old["env"].pop("portfolio")}
    with pytest.raises(ConfigError, match="belongs in"):
        C.from_dict(old)  # a user's file: told where the key goes
    cfg = C.from_saved(old)  # a run's own config.json / checkpoint metadata: read
    assert (cfg.env.portfolio.slippage, cfg.env.portfolio.ruin_fraction) == (0.002, 0.3)


@dataclasses.dataclass(frozen=True)
class Phase:  # the shape of a schedule's phase: required and ruled fields
    end: int
    actor_lr: float = C.setting(3e-4, "learning rate", rule=C.Above(0))
    note: str = "x"


@dataclasses.dataclass(frozen=True)
class Schedule:
    name: str = "s"
    phases: tuple[Phase, ...] = ()


def test_arrays_of_tables_build_check_and_report_each_item(tmp_path):
    raw = C.load_toml(write(tmp_path, 'name = "two"\n[[phases]]\nend = 10\n'
                                      "[[phases]]\nend = 2e1\nactor_lr = 0\n"))
    s = C.build_table(Schedule, raw, "run.toml")
    assert s == Schedule("two", (Phase(10), Phase(20, 0.0)))
    assert C.table_problems(s, "run.toml") == ["run.toml phases #2 actor_lr=0.0 must be > 0"]
    bad = {"phases": [{"end": 1}, {"actor_lr": 1.0}]}
    with pytest.raises(ConfigError, match=r"^run.toml phases #2: missing end$"):
        C.build_table(Schedule, bad, "run.toml")
    with pytest.raises(ConfigError, match=r"phases #1 end: expected int, got str 'x'"):
        C.build_table(Schedule, {"phases": [{"end": "x"}]}, "run.toml")
    with pytest.raises(ConfigError, match="unknown key 'ends' .*did you mean 'end'"):
        C.build_table(Schedule, {"phases": [{"ends": 1}]}, "run.toml")
    assert C._plain(s) == {"name": "two", "phases": [
        {"end": 10, "actor_lr": 3e-4, "note": "x"}, {"end": 20, "actor_lr": 0.0, "note": "x"}]}
