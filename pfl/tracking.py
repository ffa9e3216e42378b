"""MLflow tracking: one run per Hydra job, metrics per round, artifacts at the end.

Everything goes through MlflowClient with an explicit run id, so parallel jobs in one process
tree never share the fluent API's global "active run".

Stores: `sqlite:///path` (the embedded default; parallel jobs may share it) or a tracking
server at `http(s)://host:port`. Anything else MLflow accepts (file:, postgresql:, ...) is
passed through unchanged.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pfl import export_cache
from pfl.background import InOrder
from pfl.config import flatten
from pfl.errors import PflError
from pfl.fl.callbacks import Callback, RoundInfo
from pfl.metrics import METRICS

log = logging.getLogger(__name__)
_BATCH = 500  # MLflow accepts up to 1000 metrics / 100 params per log_batch call
# SQLite busy timeout: a writer waits this long for another job's transaction before failing.
SQLITE_TIMEOUT_S = 60
# Probing a tracking server: MLflow's own HTTP retries back off for minutes on a dead server.
PROBE_TIMEOUT_S = 10
# What _retry treats as another job holding the SQLite store (transient), in lower case.
_TRANSIENT = ("database is locked", "database table is locked", "database schema has changed", "sqlite_busy")


class Terminated(SystemExit):
    """SIGTERM during a tracked run. Python's default is to die on the spot, which would leave the
    MLflow run RUNNING for ever; unwinding instead lets the run end as KILLED. A SystemExit: the
    process still exits (code 143) without a traceback, and Lightning re-raises it untouched."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)

    def __str__(self) -> str:
        return "terminated by SIGTERM"


def _on_sigterm(signum, frame):
    raise Terminated()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (query string dropped), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def store_uri(uri: str) -> str:
    """The URI MLflow is given: an absolute SQLite path with a busy timeout, so that the jobs of a
    parallel sweep wait for each other's transactions instead of failing at once. The absolute
    path also makes every job agree on MLflow's schema-creation lock, which is keyed by URI."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    query = uri.split("?", 1)[1] if "?" in uri else ""
    if "timeout=" not in query:
        query = "&".join(q for q in (query, f"timeout={SQLITE_TIMEOUT_S}") if q)
    return f"sqlite:///{path.expanduser().resolve()}?{query}"


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(t in text for t in _TRANSIENT)


def _retry(fn, *args, attempts: int = 12, **kwargs):
    """SQLite allows one writer. The busy timeout covers most waits, but SQLite answers 'database
    is locked' at once where waiting could deadlock (a reader upgrading to writer while another
    job writes); the transaction was rolled back, so it is safe to try again."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _transient(e) or i == attempts - 1:
                raise
            time.sleep(min(0.1 * 2 ** i, 5.0) * (0.5 + random.random()))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: MLflow's own init lock is all there is
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _http_patience(retries: int, timeout_s: int) -> Iterator[None]:
    """MLflow reads its HTTP retry settings on every request; narrow them for a block. A value the
    user set in the environment wins."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in keys}
    for k, v in keys.items():
        if saved[k] is None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def open_client(uri: str, key: str = "logger.tracking_uri", fix: str = "or use logger=none"):
    """An MlflowClient on `uri` whose store is known to answer, or one clear PflError naming the
    setting `key` the URI came from.

    A new SQLite store's tables are created under a file lock beside the database: jobs that start
    together would otherwise race to create the schema."""
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is not None:
        path = path.expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PflError(f"{key}={uri!r}: cannot create {path.parent} ({e})") from None
    try:
        if path is not None:
            # MLflow creates (and migrates) the tables, unlocked, when the client opens the store.
            with _file_lock(path.with_name(path.name + ".lock")):
                client = MlflowClient(tracking_uri=store_uri(uri))
                _retry(client.search_experiments, max_results=1)
        else:
            client = MlflowClient(tracking_uri=store_uri(uri))
            with _http_patience(retries=0, timeout_s=PROBE_TIMEOUT_S):
                client.search_experiments(max_results=1)
    except Exception as e:
        raise PflError(f"{key}={uri!r}: the MLflow tracking store does not answer ({_first_line(e)}); "
                       f"start the server, fix the URI, {fix}") from None
    return client


def experiment_id(client, cfg: DictConfig, uri: str) -> str:
    """The id of the study's MLflow experiment (logger.experiment_name), created if missing."""
    name = str(cfg.logger.experiment_name)
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise PflError(f"logger.experiment_name={name!r}: that MLflow experiment is deleted; restore it "
                           "(mlflow experiments restore) or choose another study name")
        return exp.experiment_id
    loc = cfg.logger.get("artifact_location")
    # Only a local store takes a local artifact directory; a server decides its own.
    local = sqlite_path(uri) is not None or "://" not in uri
    try:
        return _retry(client.create_experiment, name,
                      artifact_location=Path(str(loc)).expanduser().resolve().as_uri() if loc and local else None)
    except Exception:  # another job created it first
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


#: the clock of `logger.flush_every_s` (tests drive it)
_monotonic = time.monotonic
#: rounds kept pending at most: every checkpoint saves them (pfl.fl.checkpoint), about 0.07 ms a
#: round of 180 metrics to serialize, and one flush of 10 rounds costs the store far less than 10
#: flushes (most of a log_batch call is its fixed cost)
_MAX_PENDING = 10


class MlflowTracker(Callback):
    def __init__(self, cfg: DictConfig, run_name: str, tags: dict[str, str], artifacts=None,
                 rr_stats: dict | None = None):
        import mlflow

        from pfl.artifacts import ArtifactWriter

        self.cfg, self.run_name, self.tags = cfg, run_name, dict(tags)
        #: the RR features' shift and scale (data.rr.standardize): the served model expects them applied
        self.rr_stats = rr_stats
        #: writes the run's tables, figures and final metrics; the tracker uploads its directory
        self.artifacts = artifacts if artifacts is not None else ArtifactWriter(
            cfg, Path(tempfile.mkdtemp(prefix="pfl-artifacts-")))
        self.uri = str(cfg.logger.tracking_uri)
        self.client = open_client(self.uri)
        # Some artifact repositories (the server's proxied mlflow-artifacts:) resolve the tracking
        # URI globally.
        mlflow.set_tracking_uri(store_uri(self.uri))
        self.run_id: str | None = None
        self.resumed = False
        self._prev_sigterm = None
        self._warm: threading.Thread | None = None
        #: the per-round MLflow calls, in order, off the round's critical path
        self._queue = InOrder("pfl-mlflow")
        # Rounds' metrics not yet handed to the queue: (metrics, round, time in ms). Logged at
        # most every `logger.flush_every_s` (0: every round) because the store's Python code
        # (SQLAlchemy, about 25 ms of CPU for 180 metrics) holds the GIL that the training loop
        # needs to dispatch every op: logged every round it slowed the small model's rounds by
        # 10% (BENCHMARKS.md section 1).
        self._flush_s = float(cfg.logger.get("flush_every_s", 0) or 0)
        self._pending: list[tuple[dict[str, float], int, int]] = []
        self._made: tuple[int, tuple[dict[str, float], int, int]] | None = None  # (round, its row)
        self._flushed_at = _monotonic()

    def _experiment_id(self) -> str:
        return experiment_id(self.client, self.cfg, self.uri)

    def _trap_sigterm(self) -> None:
        try:
            # Ours for the length of the run, whatever was there (Ray's driver installs one that
            # exits without a word to MLflow); the previous handler comes back afterwards.
            prev = signal.signal(signal.SIGTERM, _on_sigterm)
            self._prev_sigterm = signal.SIG_DFL if prev is None else prev  # None: set outside Python
        except ValueError:  # not the main thread: signals are not ours to handle
            pass

    def _release_sigterm(self) -> None:
        if self._prev_sigterm is not None:
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None

    def start(self, run_id: str | None = None, unlogged: Sequence = ()) -> str:
        """Start (or, given the checkpoint's `run_id`, continue) the MLflow run. `unlogged`: the
        rows the checkpoint saved that its run may not have logged before it was killed; a
        continued run logs them with its first flush (MLflow skips the ones it already has)."""
        run_id = self._start(run_id)
        if self.resumed:
            self._pending = [(dict(m), int(step), int(ts)) for m, step, ts in unlogged]
        self._trap_sigterm()
        return run_id

    def unlogged(self, info: RoundInfo) -> list[tuple[dict[str, float], int, int]]:
        """The rows not yet handed to the store once this round is logged: the pending rounds and
        this one (the checkpointer saves them before the tracker sees the round)."""
        return [*self._pending, self._row(info)]

    def _start(self, run_id: str | None) -> str:
        if run_id:
            try:
                self.client.get_run(run_id)
            except Exception:
                log.warning("MLflow run %s of the checkpoint not found; starting a new run", run_id)
            else:
                self.run_id, self.resumed = run_id, True
                _retry(self.client.update_run, run_id, status="RUNNING")
                if "error" in self.client.get_run(run_id).data.tags:  # from the attempt that failed
                    _retry(self.client.delete_tag, run_id, "error")
                return run_id
        tags = {**self.tags, "mlflow.user": _user(), "mlflow.source.name": "pfl", "mlflow.source.type": "LOCAL"}
        from pfl.sweep import parent_of_job

        parent = parent_of_job()
        if parent:  # a job of a multirun: nested under the sweep's parent run
            tags["mlflow.parentRunId"] = parent
        if self.tags.get("git_commit", "unknown") != "unknown":
            tags["mlflow.source.git.commit"] = self.tags["git_commit"]
        run = _retry(self.client.create_run, self._experiment_id(), run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _params(self.cfg).items()]
        for i in range(0, len(params), 100):
            _retry(self.client.log_batch, self.run_id, params=params[i:i + 100])
        return self.run_id

    def on_run_start(self, server) -> None:
        # The report needs to know which clients never trained (inter-patient DS2); metric names
        # alone do not say.
        # The order of `clients` is the order tables list them in.
        unseen = [c.cid for c in server.eval_clients if c.role == "unseen"]
        heldout = [c.cid for c in server.eval_clients if c.role == "heldout"]
        tags = {"n_clients": str(len(server.eval_clients)),
                "clients": _joined([c.cid for c in server.eval_clients])}
        if unseen:
            tags["unseen_clients"] = _joined(unseen)
        if heldout:
            tags["heldout_clients"] = _joined(heldout)
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _log_rows(self, rows: Sequence[tuple[dict[str, float], int, int]]) -> None:
        """Each row's metrics at its step, stamped with the time the row was made."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), ts, step) for metrics, step, ts in rows
                 for k, v in metrics.items() if v is not None and np.isfinite(v)]
        for i in range(0, len(items), _BATCH):
            _retry(self.client.log_batch, self.run_id, metrics=items[i:i + _BATCH])

    def _flush(self, now: bool = False) -> None:
        """Hand the pending rounds to the queue (`now`: log them in this thread). They stay
        pending until that succeeds, so an error or a signal midway leaves them for
        on_exception (rows logged twice are stored once: MLflow skips exact duplicates)."""
        self._flushed_at = _monotonic()
        if not self._pending:
            return
        if now:
            self._log_rows(self._pending)
        else:
            self._queue.submit(self._log_rows, list(self._pending))
        self._pending = []

    def _row(self, info: RoundInfo) -> tuple[dict[str, float], int, int]:
        """The round's metrics, its step and the time it ended (ms). Made once per round, so the
        checkpointer's copy and the logged one carry the same time."""
        if self._made is None or self._made[0] != info.rnd:
            metrics = {**info.metrics, "clients.participating": len(info.updates), "clients.dropped": len(info.dropped),
                       "clients.diverged": len(info.diverged)}
            # Plain floats: the checkpoint that saves the row loads only plain values (weights_only).
            metrics = {k: None if v is None else float(v) for k, v in metrics.items()}
            self._made = (info.rnd, (metrics, info.rnd, int(time.time() * 1000)))
        return self._made[1]

    def _log_round(self, info: RoundInfo) -> None:
        self._pending.append(self._row(info))
        if _monotonic() - self._flushed_at >= self._flush_s or len(self._pending) >= _MAX_PENDING:
            self._flush()
        if info.dropped or info.diverged:
            self._queue.submit(_retry, self.client.log_text, self.run_id,
                               json.dumps({"dropped": info.dropped, "diverged": info.diverged}),
                               f"rounds/round_{info.rnd:04d}_clients.json")

    def _history(self, result) -> list[dict[str, float]]:
        """The learning curves' points: a resumed run's result holds only the rounds after the
        checkpoint, the store holds them all."""
        if not self.resumed:
            return result.history
        keys = ["train_loss"] + [f"{s}.{m}.{k}.mean" for s in ("val", "test") for m in ("global", "personal")
                                 for k in METRICS]
        rounds: dict[int, dict[str, float]] = {}
        for key in keys:
            for m in _retry(self.client.get_metric_history, self.run_id, key):
                rounds.setdefault(m.step, {"round": m.step})[key] = m.value
        return [rounds[r] for r in sorted(rounds)] or result.history

    def on_run_end(self, result) -> None:
        if self.resumed:  # its learning curves are read from the store: every round must be there
            self._flush()
        self._queue.close()
        if self._warm is not None:  # no import under way in another thread when the writer forks
            self._warm.join()
        # The same files a logger=none run leaves in its run directory, the figures drawn in the
        # writer's child process while this one logs the model, then uploaded from there.
        self.artifacts.history = self._history
        self.artifacts.start(result)
        try:
            # Bootstrap intervals of the final per-client macro-F1, for pfl-report's client tables.
            # Logged with the rounds not yet flushed, while the figures are drawn in the child.
            last = int(self.cfg.federation.rounds)
            self._pending.append(({f"client.{r['client']}.test.personal.f1.ci_{b}": r[f"f1_personal_{b}"]
                                   for r in self.artifacts.rows for b in ("lo", "hi")}, last, int(time.time() * 1000)))
            self._flush(now=True)
            if self.cfg.logger.get("log_model", True) and self.tags.get("strategy_has_global", "true") == "true":
                # One thread: the model sees two beats, and the figures are being drawn in a child
                # process on another core, which a second torch thread would wait on at every op.
                before = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    self._log_model(result.global_weights)
                finally:
                    torch.set_num_threads(before)
        finally:
            directory = self.artifacts.join()
        _retry(self.client.log_artifacts, self.run_id, str(directory))
        _retry(self.client.set_terminated, self.run_id, "FINISHED")
        self._release_sigterm()

    def on_round_end(self, info: RoundInfo) -> None:
        self._log_round(info)
        if self._warm is None:  # after round 1: worker processes, if any, are forked by now
            self.artifacts.prewarm()
            pt2 = str(self.cfg.logger.get("model_format", "pt2")) == "pt2"
            self._warm = threading.Thread(target=_import_model_logging, args=(pt2,), name="pfl-prewarm-mlflow",
                                          daemon=True)
            self._warm.start()

    def _log_model(self, weights: dict[str, torch.Tensor]) -> None:
        """The final global model as an MLflow PyTorch model (artifact `model`), so that
        `mlflow.pyfunc.load_model("runs:/<id>/model")` and `mlflow models serve` classify beats:
        input float32 (n, leads, window [+ RR features]) beats cut and normalized as `data` says, output (n, classes)
        logits in the order of the `classes` metadata. Strategies without one global model
        (FedPer, FedRep, FedBN, LG-FedAvg, local) have no single model to serve and log none."""
        import hydra
        import mlflow
        from mlflow.models import infer_signature

        model = hydra.utils.instantiate(self.cfg.model)
        model.load_state_dict(weights)
        model.eval()
        data = self.cfg.data
        window = int(data.window.before) + int(data.window.after)
        leads = 1 + len(data.get("extra_leads") or ())
        rr = OmegaConf.to_container(data.rr, resolve=True) if "rr" in list(data.get("features") or ()) else None
        k = len(rr["features"]) if rr else 0
        example = np.zeros((2, leads, window + k), dtype=np.float32)
        example[1, :, int(data.window.before)] = 1.0  # an R peak where the beats have theirs
        example[:, :, window:] = 0.8 if k else 0.0  # RR intervals of 0.8 s (ratios near 1 are typical)
        if k and self.rr_stats:  # served on the raw RR features: the model standardizes them itself
            from pfl.models.inputs import StandardizeRR

            model = StandardizeRR(model, self.rr_stats["mean"], self.rr_stats["std"]).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(example)).numpy()
        metadata = {"classes": list(self.cfg.data.classes), "fs": int(data.fs),
                    "window_before": int(data.window.before), "window_after": int(data.window.after),
                    "normalize": str(data.get("normalize")),
                    "leads": [str(data.lead), *map(str, data.get("extra_leads") or ())],
                    "rr_features": list(rr["features"]) if rr else [], "rr_causal": bool(rr["causal"]) if rr else False,
                    # x_rr = (rr - mean) / std per feature, where the run standardized them
                    "rr_standardize": self.rr_stats or None,
                    "input": f"float32 (n, {leads}, window{' + rr_features' if k else ''}) beats"
                             + (": every lead's window, then the RR features (pfl.data.rr.pack)" if k else "")
                             + (" (raw: the model standardizes them with rr_standardize itself; the run's "
                                "global_model.pt expects them standardized)" if k and self.rr_stats else ""),
                    "output": "logits (n, classes)"}
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        signature, requirements = infer_signature(example, logits), _requirements()
        fmt = str(self.cfg.logger.get("model_format", "pt2"))
        program = None
        if fmt == "pt2":
            cache = (Path(str(self.cfg.paths.cache_dir)) / "export"
                     if self.cfg.logger.get("export_cache", True) and self.cfg.get("paths") else None)
            program, hit = export_cache.exported(model, torch.from_numpy(example), cache)
            log.debug("model export %s", "from the cache" if hit else "traced")
        # The logged model is created here, linked to the run, and handed to log_model with no
        # run active: given the run, MLflow 3's log_model reads the whole history of every metric
        # the run has (one query per key) to copy step 0's onto the model, 0.24 s for the 186 keys
        # of a 3-client run and growing with clients and rounds; pfl logs no metric at step 0.
        logged = _retry(self.client.create_logged_model, self._experiment_id(), name="model",
                        source_run_id=self.run_id, params=_params(self.cfg), model_type="pfl-global")
        try:
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(self.client.tracking_uri)  # log_model's own client and finalize use it
            try:
                # In a thread of its own: MLflow's active run is per thread, and log_model would
                # take a caller's own (pfl.run.train inside mlflow.start_run) as the model's run.
                # pt2: MLflow would load the saved program back and run the input example through
                # it (0.13 s at every run's end, a warning if it failed); the program was checked
                # against the model's own logits before (pfl.export_cache), and the tests serve
                # the logged model through pyfunc. (pickle passes extra arguments to torch.save.)
                extra = {"validate_serving_input": False} if program is not None else {}
                with export_cache.reusing(model, program) if program is not None else contextlib.nullcontext():
                    _in_thread(mlflow.pytorch.log_model, model, name="model", model_id=logged.model_id,
                               signature=signature, input_example=example, metadata=metadata,
                               serialization_format=fmt, pip_requirements=requirements, **extra)
            finally:
                mlflow.set_tracking_uri(previous)
            # The run's output, at the round that produced it (what log_model records for a run).
            _retry(self.client.log_outputs, self.run_id,
                   [LoggedModelOutput(logged.model_id, step=int(self.cfg.federation.rounds))])
        except BaseException:
            # Not left PENDING (runs:/<id>/model would resolve to a model without files), also
            # when SIGTERM or Ctrl-C lands here.
            try:
                self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            except Exception as e:  # noqa: BLE001 - the first error is the one to report
                log.error("could not mark MLflow logged model %s FAILED: %s", logged.model_id, _first_line(e))
            raise

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def on_exception(self, exc: BaseException) -> None:
        self._release_sigterm()
        self.artifacts.join_prewarm()
        if self._warm is not None:
            self._warm.join(30)
        try:  # the rounds logged so far stay in the store
            self._flush()
            self._queue.close(timeout=PROBE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - the run's own error is the one to report
            log.error("MLflow: metrics of the last rounds not logged: %s", _first_line(e))
        if self.run_id is None:
            return
        # Ctrl-C reaches us as SystemExit when it lands inside a Lightning fit.
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        try:
            # The server may be what failed: do not wait minutes for it.
            with _http_patience(retries=1, timeout_s=PROBE_TIMEOUT_S):
                _retry(self.client.set_tag, self.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
                _retry(self.client.log_text, self.run_id, "".join(traceback.format_exception(exc)), "error.txt")
                _retry(self.client.set_terminated, self.run_id, status)
        except Exception as e:
            log.error("could not mark MLflow run %s as %s: %s", self.run_id, status, _first_line(e))


def _params(cfg: DictConfig) -> dict[str, str]:
    """The run's flattened config as MLflow params (values within MLflow's length limit)."""
    return {k: str(v)[:6000] for k, v in flatten(cfg).items() if not k.startswith("hydra.")}


def _in_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a new thread, waited for; its result returned, its error raised."""
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = e

    t = threading.Thread(target=call, name="pfl-log-model")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _requirements() -> list[str]:
    """The logged model's pip requirements: the installed versions (inferring them would load
    the model again in a child process)."""
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


def _import_model_logging(pt2: bool) -> None:
    """What logging the model imports (about 0.5 s in a fresh process; torch.export's tracing
    machinery another 1.0 s), loaded while rounds train, and MLflow's map of installed packages,
    which its check of the requirements against the environment builds by reading every
    installed distribution's metadata (about 0.3 s, once per process). Imports only: tracing a
    model here would patch torch.nn.Module.__call__ under the training thread."""
    try:
        import mlflow.pytorch  # noqa: F401
        from mlflow.models import infer_signature  # noqa: F401
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        if pt2:
            import torch.export._trace  # noqa: F401
        warn_dependency_requirement_mismatches(_requirements())
    except Exception:  # noqa: BLE001 - _log_model imports them again and reports the error there
        pass


def _joined(ids: list[str], limit: int = 5000) -> str:
    """Comma-joined ids, whole ids only, within MLflow's tag length."""
    out = ""
    for cid in ids:
        if len(out) + len(cid) + 1 > limit:
            break
        out = f"{out},{cid}" if out else cid
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
