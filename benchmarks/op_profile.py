"""Where a compiled program's time goes, by part of the network and by direction.

`profile_ops(compiled, args)` runs an AOT-compiled program under JAX's profiler, reads the
Perfetto trace it writes, and attributes each traced XLA op to the HLO instruction of the
same name in ``compiled.as_text()``. Each instruction carries its source: the op name
(``jit(f)/jvp(GRUActorCritic.unroll)/encoder/dense_0/dot_general``, so the Flax module
that emitted it and, under ``transpose(...)``, whether it belongs to the backward pass)
and a stack frame (the file and function, e.g. ``jaxtrade/ppo.py:ppo_loss`` or optax's).

A row per (part, direction): the part is the Flax submodule named in the op name
(``encoder``, ``gru``, ``policy_head``, ``value_head``, ...) or else the innermost frame
of jaxtrade's own code (``ppo.py:ppo_loss``; a scan's own slicing of each step's inputs
and stacking of its outputs goes to the function that runs it), ``optimizer (optax)``,
``loop bookkeeping`` (a loop's work with no frame of jaxtrade's), or ``other``. Times
are op time summed over the program's threads (CPU) or streams (GPU), per call (per step
with ``steps``), so they
can add up to more than the wall time when ops run side by side;
``busy`` is that sum over the wall time (how many ops ran side by side on average, not
how many cores were busy: one op may use several). The runtime tags each op's trace
events with the program's module and the op's name; ops named by no instruction of the
program's text are counted apart as ``unmatched`` (a large share says the trace names ops
differently from the text: checked on CPU; a GPU run of ``benchmarks/gpu_check.sh`` will
show it). A fused op is charged to its fusion's op name, which may cover a few parts.

``steps``: a call runs that many like steps (the joint epochs' minibatch steps, in their
loop); every figure is then per step. Profile a step in the loop that runs it in
training, not a program of one step: such a program allocates and first-touches its
temporary buffers on every call, which the loop does once per call, and on a CPU the page
faults land in the ops that write those buffers first (2026-12-01, 2 cores, the PureJaxRL
comparison's config: one step alone 484 ms, 127,778 faults per call, against 5.49 s / 16
= 343 ms per step inside the joint epochs; its first encoder matmul 34-36 ms in traces of
the step alone, 14.8 ms in the loop).

Used by ``python -m benchmarks.phases`` for the joint epochs, per minibatch step
(``--op-profile``).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax

# Op-name components that are JAX's or XLA's wrappers, not a Flax module.
_WRAPPERS = {"while", "body", "cond", "closed_call", "checkpoint", "remat", "rematted_computation",
             "branch_0_fun", "branch_1_fun", "scan", "vmap", "pjit"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Ops that hold other ops (a loop, a branch, a call): their trace spans cover their bodies'
# ops, which are traced themselves.
_CONTAINER = re.compile(r"(?<![\w-])(?:while|conditional|call)\(%")  # not custom-call
_FRAME = re.compile(r"stack_frame_id=(\d+)")


def _section(lines: list[str], name: str) -> dict[int, str]:
    """`name`'s numbered entries in an HLO module's text (`FileNames`, `StackFrames`, ...)."""
    try:
        start = lines.index(name)
    except ValueError:
        return {}
    out = {}
    for line in lines[start + 1:]:
        m = re.match(r"(\d+) (.*)", line)
        if not m:
            break
        out[int(m.group(1))] = m.group(2).strip('"')
    return out


def _frames(lines: list[str]) -> dict[int, list[tuple[str, str]]]:
    """stack frame id -> its (file, function) chain, innermost first."""
    files, functions = _section(lines, "FileNames"), _section(lines, "FunctionNames")
    locations = {}
    for k, v in _section(lines, "FileLocations").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locations[k] = (files.get(int(f.get("file_name_id", 0)), "?"),
                        functions.get(int(f.get("function_name_id", 0)), "?"))
    parents = {}
    for k, v in _section(lines, "StackFrames").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        # the text gives a frame's parent as its id + 1 (0: none)
        parents[k] = (int(f.get("file_location_id", 0)), int(f.get("parent_frame_id", 0)) - 1)

    def chain(frame: int) -> list[tuple[str, str]]:
        out, seen = [], set()
        while frame in parents and frame not in seen:
            seen.add(frame)
            location, parent = parents[frame]
            if location in locations:
                out.append(locations[location])
            frame = parent
        return out

    return {k: chain(k) for k in parents}


def part_of(op_name: str, chain: list[tuple[str, str]]) -> str:
    """The part an instruction belongs to (module docstring)."""
    for component in op_name.split("/")[:-1]:  # the last one is the primitive
        if ("(" in component or "." in component or component in _WRAPPERS
                or not re.fullmatch(r"[a-z][a-z0-9_]*", component)):
            continue
        return component  # the first named submodule (capitalised: a class, skipped)
    for file, function in chain:
        if "site-packages" in file or "dist-packages" in file:
            if "/optax/" in file:
                return "optimizer (optax)"
            continue
        if "/jaxtrade/" in file:
            return f"{file.rsplit('/jaxtrade/', 1)[1]}:{function.split('.<locals>')[0]}"
    if "/while/" in op_name:
        return "loop bookkeeping"
    return "other"


def _instructions(hlo_text: str) -> dict[str, tuple[str, str, str] | None]:
    """instruction name -> (part, "forward" | "backward", op name) for every instruction of
    a compiled module's text; None for an op that holds others (a loop, a branch, a call),
    whose time is its body's ops'."""
    lines = hlo_text.splitlines()
    frames = _frames(lines)
    out: dict[str, tuple[str, str, str] | None] = {}
    for line in lines:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, rest = m.groups()
        # XLA:CPU runs a small loop wrapped in a call as one kernel: a leaf, not a container
        if _CONTAINER.search(rest.split(", metadata=")[0]) and "small_call" not in rest:
            out[name] = None
            continue
        op = _OP_NAME.search(rest)
        op_name = op.group(1) if op else ""
        frame = _FRAME.search(rest)
        chain = frames.get(int(frame.group(1)), []) if frame else []
        out[name] = (part_of(op_name, chain),
                     "backward" if "transpose(" in op_name else "forward", op_name)
    return out


def instruction_parts(hlo_text: str) -> dict[str, tuple[str, str] | None]:
    """instruction name -> (part, "forward" | "backward") for every instruction of a
    compiled module's text; None for an op that holds others (`_instructions`)."""
    return {name: i and i[:2] for name, i in _instructions(hlo_text).items()}


def _trace_events(trace_dir: Path) -> tuple[list[dict], dict[int, str]]:
    """The trace's complete events and its process names (pid -> name)."""
    paths = sorted(trace_dir.glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not paths:
        raise RuntimeError(f"the profiler wrote no Perfetto trace under {trace_dir}")
    events = json.loads(gzip.open(paths[-1]).read())
    events = events["traceEvents"] if isinstance(events, dict) else events
    processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    return [e for e in events if e.get("ph") == "X"], processes


def profile_ops(compiled, args: tuple, calls: int = 2, trace_dir: str | None = None,
                top: int = 15, steps: int = 1) -> dict:
    """Runs ``compiled(*args)`` ``calls`` times under the profiler (after one untraced
    call) and attributes the traced op time (module docstring).

    An op's events are those the runtime tags with the program's module and the op
    (``hlo_module``, ``hlo_op``); where some are on a device's timeline (a GPU's), only
    those count, so an op launched from the host is not counted twice.

    Returns: {"calls", "steps" (per call), "wall_s" (per step), "op_s" (op time per step),
    "busy", "source" ("device" or "host": the timelines counted), "loops_s" (the spans of
    loops, branches and calls, whose bodies' ops are counted instead; per step),
    "unmatched_s" (ops tagged with the program but named by no instruction of its text; per
    step), "rows": [{"part", "direction", "seconds", "share"}, ...] largest first, shares
    of op_s, "top_ops": the `top` costliest ops [{"op", "part", "direction", "seconds",
    "events" (per step), "op_name"}, ...]}.
    """
    text = compiled.as_text()
    instructions = _instructions(text)
    module = re.match(r"HloModule ([^\s,]+)", text)
    module = module.group(1) if module else None
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(trace_dir or tmp)
        jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
        t0 = time.perf_counter()
        try:
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        finally:
            wall = (time.perf_counter() - t0) / calls / steps
            jax.profiler.stop_trace()
        events, processes = _trace_events(directory)
    ops = [e for e in events if "hlo_op" in (e.get("args") or {})
           and e["args"].get("hlo_module", module) == module]
    on_device = [e for e in ops if "/device:" in processes.get(e.get("pid"), "")]
    source = "device" if on_device else "host"
    by_op: dict[str, float] = collections.defaultdict(float)
    n_events: collections.Counter = collections.Counter()
    loops = unmatched = 0.0
    for e in on_device or ops:
        seconds = e.get("dur", 0) * 1e-6
        op = e["args"]["hlo_op"]
        if op not in instructions:
            unmatched += seconds
        elif instructions[op] is None:
            loops += seconds
        else:
            by_op[op] += seconds
            n_events[op] += 1
    by_part: dict[tuple[str, str], float] = collections.defaultdict(float)
    for op, seconds in by_op.items():
        by_part[instructions[op][:2]] += seconds
    n = calls * steps
    op_s = sum(by_part.values()) / n
    top_ops = [{"op": op, "part": instructions[op][0], "direction": instructions[op][1],
                "seconds": s / n, "events": n_events[op] / n, "op_name": instructions[op][2]}
               for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]
    rows = [{"part": part, "direction": direction, "seconds": s / n,
             "share": s / n / op_s if op_s else 0.0}
            for (part, direction), s in sorted(by_part.items(), key=lambda kv: -kv[1])]
    return {"calls": calls, "steps": steps, "wall_s": wall, "op_s": op_s,
            "busy": op_s / wall if wall else 0.0, "source": source, "loops_s": loops / n,
            "unmatched_s": unmatched / n, "rows": rows, "top_ops": top_ops}


def _tail(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def summary(profile: dict, top: int = 12) -> str:
    """Printable lines: the largest rows, then what they add up to (per call, or per step
    of a loop of ``steps``)."""
    per = "step" if profile.get("steps", 1) > 1 else "call"
    lines = [f"  {r['part'][:42]:42s} {r['direction']:8s} {r['seconds'] * 1e3:9.2f} ms "
             f"{r['share']:6.1%}" for r in profile["rows"][:top]]
    if len(profile["rows"]) > top:
        rest = profile["rows"][top:]
        lines.append(f"  {f'({len(rest)} more)':42s} {'':8s} "
                     f"{sum(r['seconds'] for r in rest) * 1e3:9.2f} ms "
                     f"{sum(r['share'] for r in rest):6.1%}")
    if profile.get("top_ops"):
        lines.append(f"  costliest ops (ms per {per}, events per {per}, op name):")
        lines += [f"    {o['op'][:28]:28s} {o['seconds'] * 1e3:8.2f} ms {o['events']:6.3g}  "
                  f"{_tail(o['op_name'], 70)}" for o in profile["top_ops"][:8]]
    lines.append(f"  op time {profile['op_s'] * 1e3:.1f} ms per {per} ({profile['source']} "
                 f"timelines) over a wall of {profile['wall_s'] * 1e3:.1f} ms (ops side by "
                 f"side: {profile['busy']:.2f}); ops named by no instruction "
                 f"{profile['unmatched_s'] * 1e3:.1f} ms")
    return "\n".join(lines)
