"""What a run prints: the banner's lines, a log line per iteration, the live progress bar,
and waits that outlast a minute. Host-only; only the primary process prints."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

from jaxtrade.watchdog import format_seconds


def emit(text: str, file=None) -> None:
    """Writes `text` in one call and flushes: a line printed while another thread prints
    (an Orbax save finishing in the background, a watchdog's wait) stays whole, where
    `print` writes the text and its end separately and another line can land between."""
    file = sys.stdout if file is None else file
    file.write(text)
    file.flush()


class Progress:
    """A one-line live bar on stderr when it is a terminal (host-only)."""

    def __init__(self, total_steps: int, enabled: bool):
        self.total = total_steps
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def update(self, steps: int, sps: float, ret: float):
        if not self.enabled:
            return
        frac = steps / self.total
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        eta = (self.total - steps) / sps if sps > 0 else float("inf")
        sys.stderr.write(
            f"\r[{bar}] {100 * frac:5.1f}% {steps:,}/{self.total:,} steps | {sps:,.0f} sps"
            f" | ETA {format_seconds(eta)} | ret {ret:+.4f}\x1b[K"
        )
        sys.stderr.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclasses.dataclass
class Timed:
    """What `Console.timed` measured: the block's seconds, once it has ended."""

    seconds: float = 0.0


class Console:
    """stdout for the run's story, stderr for warnings and waits; silent off the primary
    process and at verbosity 0 (warnings still print on the primary)."""

    def __init__(self, verbosity: int, primary: bool, where: str = ""):
        self.verbosity = verbosity if primary else 0
        self.primary = primary
        self.where = where  # "process I: " with several processes
        self.partial_line = False  # the last say() left its line open for a "done in ..."
        self.progress = Progress(1, enabled=False)

    def say(self, *parts, end: str = "\n") -> None:
        """`print(*parts, end=end)` to stdout, written whole and flushed (`emit`)."""
        if self.verbosity > 0:
            emit(" ".join(map(str, parts)) + end)
            self.partial_line = not end.endswith("\n")

    @contextlib.contextmanager
    def timed(self, label: str):
        """Says "`label`...", runs the block, then says "done in X.Xs" on the same line;
        yields a `Timed` that holds the block's seconds after it (a compile's, to add to a
        run's compile time)."""
        self.say(f"{label}...", end=" ")
        timed, t0 = Timed(), time.perf_counter()
        yield timed
        timed.seconds = time.perf_counter() - t0
        self.say(f"done in {timed.seconds:.1f}s")

    def line(self, text: str) -> None:
        """A line that interrupts the progress bar (log lines, saves)."""
        if self.verbosity > 0:
            self.progress.clear()
            emit(text + "\n")

    def warn(self, text: str) -> None:
        if self.primary:
            emit(f"warning: {text}\n", sys.stderr)

    def notice(self, text: str) -> None:
        """A wait that outlasts the watchdog's patience (`jaxtrade.watchdog`)."""
        self.progress.clear()
        emit(("\n" if self.partial_line else "") + f"waiting: {self.where}{text}\n",
             sys.stderr)
        self.partial_line = False

    def start_progress(self, total_steps: int) -> None:
        self.progress = Progress(total_steps, enabled=self.verbosity > 0)


def log_line(row: dict, total_iters: int) -> str:
    return (
        f"it {row['iteration']:>5}/{total_iters} | steps {row['timesteps']:>11,} | "
        f"sps {row['sps']:>9,.0f} | ret {row['episode_return_mean']:+.4f} | "
        f"pi {row['policy_loss']:+.4f} | v {row['value_loss']:.4f} | H {row['entropy']:.3f} | "
        f"kl {row['approx_kl']:.4f} | clip {row['clip_frac']:.3f} | "
        f"ev {row['explained_variance']:+.3f}"
    )


def verbose_lines(row: dict, action_names) -> list[str]:
    hist = " ".join(f"{n}={f:.2f}" for n, f in zip(action_names, row["action_freq"],
                                                    strict=True))
    cost = f" | cost/step {row['cost_mean']:.5f}" if "cost_mean" in row else ""
    return [
        f"    adv mean {row['advantage_mean']:+.4f} std {row['advantage_std']:.4f} | "
        f"grad norm actor {row['actor_grad_norm']:.3f} critic {row['critic_grad_norm']:.3f} | "
        f"critic loss {row.get('critic_loss_before', float('nan')):.5f} -> "
        f"{row.get('critic_loss_after', float('nan')):.5f}{cost}",
        f"    actions: {hist}",
    ]


def eval_line(row: dict, new_best: bool, env) -> str:
    """A validation walk's log line: the iteration, the env's words for its `val_` metrics
    (`Environment.evaluation_line`), the score."""
    metrics = {k[len("val_"):]: v for k, v in row.items() if k.startswith("val_")}
    return (f"val  {row['iteration']:>5} | {env.evaluation_line(metrics)} | "
            f"score {row['val_score']:+.2f}" + (" (best)" if new_best else ""))
