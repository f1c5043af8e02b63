"""benchmarks/op_profile.py: which part and direction an XLA op is charged to."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks.op_profile import _frames, instruction_parts, part_of, profile_ops


def test_the_module_named_in_the_op_name_is_the_part():
    assert part_of("jit(f)/jvp(GRUActorCritic.unroll)/encoder/dense_0/dot_general", []) == \
        "encoder"
    assert part_of("jit(f)/transpose(jvp(GRUActorCritic.unroll))/while/body/closed_call/"
                   "gru.step/gru/layer_0/input/dot_general", []) == "gru"
    assert part_of("jit(f)/jvp(GRUActorCritic.unroll)/GRUActorCritic.value_from_trunk/"
                   "value_head/norm/mul", []) == "value_head"


def test_without_a_module_the_innermost_own_frame_names_it():
    chain = [("/x/site-packages/jax/_src/numpy/ufuncs.py", "multiply"),
             ("/repo/jaxtrade/ppo.py", "ppo_loss"), ("/repo/jaxtrade/ppo.py", "LearningRule.step")]
    # the last component is the primitive, never a part
    assert part_of("jit(f)/jvp()/mul", chain) == "ppo.py:ppo_loss"
    assert part_of("jit(f)/add", [("/x/site-packages/optax/_src/transform.py", "update_fn")]) \
        == "optimizer (optax)"
    # an installed package is never jaxtrade's own code, even in a checkout named jaxtrade
    venv = "/home/u/jaxtrade/.venv/lib/python3.11/site-packages"
    assert part_of("jit(f)/add", [(f"{venv}/optax/_src/alias.py", "adam"),
                                  ("/home/u/jaxtrade/jaxtrade/ppo.py", "step")]) \
        == "optimizer (optax)"
    assert part_of("jit(f)/add", [(f"{venv}/jax/_src/numpy/ufuncs.py", "add"),
                                  ("/home/u/jaxtrade/jaxtrade/ppo.py", "gae")]) == "ppo.py:gae"
    assert part_of("jit(f)/while/body/dynamic_update_slice", []) == "loop bookkeeping"
    assert part_of("jit(f)/add", []) == "other"


def test_every_instruction_of_a_compiled_program_is_charged_once():
    """Forward ops under jvp, backward ops under transpose; a loop's own instruction is
    None (its body's ops are traced and charged themselves)."""

    def loss(w, x):
        def body(h, xt):
            h = jnp.tanh(h @ w + xt)
            return h, h
        _, hs = jax.lax.scan(body, jnp.zeros(4), x)
        return (hs ** 2).sum()

    compiled = jax.jit(jax.grad(loss)).lower(jnp.eye(4), jnp.ones((5, 4))).compile()
    parts = instruction_parts(compiled.as_text())
    loops = [name for name, p in parts.items() if p is None]
    assert any(name.startswith("while") for name in loops)
    assert all(name.startswith(("while", "call", "conditional")) for name in loops)
    directions = {p[1] for p in parts.values() if p is not None}
    assert directions == {"forward", "backward"}


def _h(x):
    return jnp.sin(x) * 3.0


def _g(x):
    return _h(x) + 1.0


def test_an_instructions_frame_chain_is_its_call_stack():
    """The module text gives a frame's parent as its id + 1: the chain of `sin` runs h, g
    and on out to the caller, innermost first."""
    text = jax.jit(_g).lower(jnp.ones(4)).compile().as_text()
    lines = text.splitlines()
    frame = int(next(line for line in lines if " sine(" in line)
                .split("stack_frame_id=")[1].split("}")[0].split()[0])
    functions = [f for _, f in _frames(lines)[frame]]
    assert functions[:2] == ["_h", "_g"], functions


def test_a_library_call_is_charged_not_dropped():
    """A custom call (here LAPACK's Cholesky) is an op of its own, not a container whose
    time its body's ops would carry: the profile charges it, and every op the trace tags
    with the program is named in its text."""
    a = jnp.eye(64) * 2.0 + 0.01
    compiled = jax.jit(lambda m: jnp.linalg.cholesky(m @ m.T).sum()).lower(a).compile()
    text = compiled.as_text()
    names = [line.split("=")[0].strip().lstrip("%").removeprefix("ROOT ").lstrip("%")
             for line in text.splitlines() if " custom-call(" in line]
    assert names, "no custom call in the program"
    parts = instruction_parts(text)
    assert all(parts[name] is not None for name in names), names
    profile = profile_ops(compiled, (a,), calls=2)
    assert profile["op_s"] > 0 and profile["unmatched_s"] == 0.0
    assert profile["source"] == "host" and profile["loops_s"] == 0.0


def test_steps_make_every_figure_per_step():
    """A call that runs 4 like steps in a loop, profiled with steps=4: each op of the loop's
    body counts one event per step, and the times are the call's over 4."""
    x = jnp.eye(32) * 0.5
    compiled = jax.jit(lambda m: jax.lax.fori_loop(
        0, 4, lambda i, m: jnp.tanh(m @ m) + 0.25, m)).lower(x).compile()
    profile = profile_ops(compiled, (x,), calls=2, steps=4)
    assert profile["steps"] == 4 and profile["op_s"] > 0
    body = [o for o in profile["top_ops"] if "while/body" in o["op_name"]]
    assert body and all(o["events"] == 1.0 for o in body), profile["top_ops"]
    assert sum(r["seconds"] for r in profile["rows"]) == pytest.approx(profile["op_s"])
    assert profile["busy"] == pytest.approx(profile["op_s"] / profile["wall_s"])
