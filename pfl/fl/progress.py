"""One progress display for the whole run: rounds, and clients within the round."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pfl.fl.callbacks import Callback, RoundInfo


class RichProgress(Callback):
    def __init__(self, rounds: int, n_eval_clients: int, console: Console | None = None):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                                 console=console or Console(stderr=True), transient=False)
        self.rounds, self.n_eval = rounds, n_eval_clients
        self.round_task = self.client_task = None

    def on_run_start(self, server) -> None:
        self.progress.start()
        self.round_task = self.progress.add_task("rounds", total=self.rounds, note="")
        self.client_task = self.progress.add_task("clients", total=0, note="")
        self.eval_every = server.eval_every

    def on_round_start(self, rnd: int, cids: list[str]) -> None:
        evaluates = rnd % self.eval_every == 0 or rnd == self.rounds
        self.progress.reset(self.client_task, total=len(cids) + (self.n_eval if evaluates else 0),
                            description=f"round {rnd}", note="")
        if rnd > 1 and self.progress.tasks[self.round_task].completed == 0:
            self.progress.update(self.round_task, completed=rnd - 1)

    def on_client_end(self, rnd: int, cid: str) -> None:
        self.progress.advance(self.client_task)

    def on_round_end(self, info: RoundInfo) -> None:
        m = info.metrics
        note = f"loss {m['train_loss']:.3f}"
        # Strategies without one global model (FedRep, FedPer, ...) report personal metrics only.
        acc = [f"{100 * m[k]:.2f}" for k in ("test.global.acc.mean", "test.personal.acc.mean") if k in m]
        if acc:
            note += "  test acc " + " -> ".join(acc)
        self.progress.update(self.round_task, advance=1, note=note)

    def on_run_end(self, result) -> None:
        self.progress.stop()

    def on_exception(self, exc: BaseException) -> None:
        self.progress.stop()
