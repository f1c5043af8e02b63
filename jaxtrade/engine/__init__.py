"""The engine: the host side of a training run, for any env and network.

`train(StartRequest, RunOptions) -> Result` runs a whole training run
(`jaxtrade.engine.run`): where it starts and what fits in memory
(`jaxtrade.engine.start`), what it prints (`jaxtrade.engine.console`), the compiled-call
loop with evaluation, best tracking, saving and signals, and `summary.json`. The command
line (`jaxtrade.train`) only parses flags into a request, calls `train`, and prints how
the run ended.
"""

from jaxtrade.engine.run import Plan, Result, RunOptions, prepare, train
from jaxtrade.engine.start import (
    Sizing,
    Start,
    StartRequest,
    eval_interval,
    plan_start,
    size_n_envs,
)

__all__ = [
    "Plan", "Result", "RunOptions", "Sizing", "Start", "StartRequest", "eval_interval",
    "plan_start", "prepare", "size_n_envs", "train",
]
