"""benchmarks/op_profile.py: which part and direction an XLA op is charged to."""

import jax
import jax.numpy as jnp

from benchmarks.op_profile import instruction_parts, part_of


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
    assert part_of("jit(f)/while/body/dynamic_update_slice", []).startswith("loops")
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
