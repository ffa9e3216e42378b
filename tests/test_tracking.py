"""MLflow tracking: a real tracking server over HTTP, the embedded SQLite store, failed runs."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from compose import make_cfg
from mlflow.tracking import MlflowClient

from pfl.errors import DataError, PflError
from pfl.fl.callbacks import Callback
from pfl.fl.server import DivergenceError
from pfl.run import train
from pfl.tracking import open_client, store_uri

ARTIFACTS = {"config.yaml", "final_clients.csv", "final_clients.md", "final_metrics.json", "partition_stats.json",
             "global_model.pt", "learning_curves.png", "ledger.jsonl"}
TAGS = ("strategy", "partition", "model", "seed", "mode", "study", "git_commit", "config_hash", "clients")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, in its own process group so that every
    process it starts is stopped with it."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_run_logs_to_a_tracking_server_over_http(synthetic_db, tmp_path, mlflow_server):
    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri={mlflow_server}",
                   "study=http_study", "strategy=finetune", "seed=3")
    result = train(cfg)
    client = MlflowClient(tracking_uri=mlflow_server)
    run = _only_run(client, "http_study")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "finetune-s3"
    # Params: the resolved config, flattened.
    p = run.data.params
    assert p["strategy.name"] == "finetune" and p["federation.rounds"] == "2" and p["seed"] == "3"
    assert p["partition.name"] == "patient" and p["model._target_"] == "pfl.models.SmallCNN"
    assert p["logger.tracking_uri"] == mlflow_server
    tags = run.data.tags
    for key in TAGS:
        assert tags.get(key), f"tag {key} missing"
    assert tags["strategy"] == "finetune" and tags["partition"] == "patient" and tags["seed"] == "3"
    assert tags["clients"].split(",") == [c.cid for c in result.evaluation.clients]
    # Metrics: every final metric, with step = round.
    for key, value in result.metrics.items():
        assert math.isclose(run.data.metrics[key], value, rel_tol=1e-12), key
    history = client.get_metric_history(run.info.run_id, "test.personal.f1.mean")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [h["test.personal.f1.mean"] for h in result.history]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "round_seconds")] == [1, 2]
    assert "client.s01.test.personal.f1" in run.data.metrics and "train_loss" in run.data.metrics
    # Artifacts, through the server's artifact proxy.
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= names, ARTIFACTS - names
    assert "confusion_test.png" in names  # every client's matrices in one figure
    local = Path(client.download_artifacts(run.info.run_id, "final_metrics.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == pytest.approx(result.metrics)
    csv = Path(client.download_artifacts(run.info.run_id, "final_clients.csv", str(tmp_path / "dl"))).read_text()
    assert csv.splitlines()[0].startswith("client,federated,n,acc_global")
    # The report reads a server's runs too.
    from pfl.report import main as report

    assert report(["--tracking-uri", mlflow_server, "--experiment", "http_study", "--out", str(tmp_path / "rep")]) == 0
    assert "| FedAvg+FT | **mean** |" in (tmp_path / "rep" / "report.md").read_text()


def test_a_tracking_server_that_does_not_answer_fails_fast(synthetic_db, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.time()
    with pytest.raises(PflError, match="does not answer") as err:
        open_client(url)
    assert time.time() - t0 < 30
    assert url in str(err.value) and "logger=none" in str(err.value)


def _sqlite_cfg(db, tmp_path, *overrides):
    return make_cfg(db, tmp_path, "logger=mlflow", "study=fail_study", *overrides)


def _runs(tmp_path, experiment):
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


def test_a_diverging_run_ends_failed_with_the_error(synthetic_db, tmp_path):
    # Adam at lr 1e30: the first local update turns the weights non-finite.
    cfg = _sqlite_cfg(synthetic_db, tmp_path, "federation.optimizer.lr=1e30", "federation.rounds=1")
    with pytest.raises(DivergenceError):
        train(cfg)
    (run,) = _runs(tmp_path, "fail_study")
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    assert run.data.tags["error"].startswith("DivergenceError: round 1: client")
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    trace = Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert trace.startswith("Traceback") and "DivergenceError" in trace


def test_a_data_error_after_the_run_started_ends_it_failed(synthetic_db, tmp_path, monkeypatch):
    import pfl.fl.server as server

    def broken(*args, **kwargs):
        raise DataError("client s01: test split unreadable")

    monkeypatch.setattr(server, "evaluate", broken)
    with pytest.raises(DataError):
        train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=2", "federation.eval_every=2"))
    (run,) = _runs(tmp_path, "fail_study")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "DataError: client s01: test split unreadable"
    assert "train_loss" in run.data.metrics  # the round's training was logged before the failure


class _StoreProbe(Callback):
    """Drives the tracker's clock (round r ends at 6 r seconds) and records, at the end of each
    round (observers see it before the tracker does), the steps of train_loss in the store."""

    def __init__(self, tmp_path, expect: dict[int, list[int]]):
        self.uri, self.expect = store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"), expect
        self.now = 0.0
        self.seen: dict[int, list[int]] = {}
        self.round_end_ms: dict[int, int] = {}

    def _steps(self, client, run_id) -> list[int]:
        return sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})

    def on_round_end(self, info) -> None:
        self.round_end_ms[info.rnd] = int(time.time() * 1000)
        client = MlflowClient(tracking_uri=self.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("fail_study").experiment_id])
        deadline = time.time() + 10  # the background thread may still be writing what was handed to it
        while not set(self.expect[info.rnd]) <= set(self._steps(client, run.info.run_id)) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # time for a round handed over too early to show up
        self.seen[info.rnd] = self._steps(client, run.info.run_id)
        self.now = 6.0 * info.rnd


@pytest.mark.parametrize("flush_every_s, max_pending, expect", [
    (0, 10, {1: [], 2: [1], 3: [1, 2], 4: [1, 2, 3]}),
    # 10 s: rounds 1-2 are handed over at round 2 (12 s), rounds 3-4 at round 4 (24 s)
    (10, 10, {1: [], 2: [], 3: [1, 2], 4: [1, 2]}),
    # at most 3 rounds pending: rounds 1-3 handed over at round 3
    (3600, 3, {1: [], 2: [], 3: [], 4: [1, 2, 3]}),
])
def test_round_metrics_reach_the_store_at_most_every_flush_every_s(synthetic_db, tmp_path, monkeypatch,
                                                                   flush_every_s, max_pending, expect):
    import pfl.tracking as tracking

    probe = _StoreProbe(tmp_path, expect)
    monkeypatch.setattr(tracking, "_monotonic", lambda: probe.now)
    monkeypatch.setattr(tracking, "_MAX_PENDING", max_pending)
    result = train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=4", f"logger.flush_every_s={flush_every_s}"),
                   callbacks=[probe])
    assert probe.seen == expect
    # Every round is in the store at its step, stamped with the time its round ended, not the
    # time it was handed over (with 10 s, round 3's at round 4's end).
    (run,) = _runs(tmp_path, "fail_study")
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(h["round"], h["train_loss"]) for h in result.history]
    assert history[0].timestamp <= probe.round_end_ms[2] and history[2].timestamp <= probe.round_end_ms[4]


class _Killed(BaseException):
    pass


def test_a_killed_run_resumed_logs_the_rounds_it_had_not_flushed(synthetic_db, tmp_path, monkeypatch):
    import signal as signals

    import pfl.tracking as tracking
    from pfl.fl.checkpoint import Checkpointer

    reference = train(_sqlite_cfg(synthetic_db, tmp_path / "ref", "federation.rounds=4"))
    run_cfg = ("federation.rounds=4", "logger.flush_every_s=3600")
    handler = signals.getsignal(signals.SIGTERM)
    save = Checkpointer.on_round_end

    def killed_after_round_2(self, info):
        save(self, info)
        if info.rnd == 2:
            raise _Killed

    try:
        with monkeypatch.context() as m:  # dies after round 2's checkpoint as SIGKILL does: no handler runs
            m.setattr(Checkpointer, "on_round_end", killed_after_round_2)
            m.setattr(tracking.MlflowTracker, "on_exception", lambda self, exc: None)
            with pytest.raises(_Killed):
                train(_sqlite_cfg(synthetic_db, tmp_path, *run_cfg))
    finally:
        signals.signal(signals.SIGTERM, handler)
    (run,) = _runs(tmp_path, "fail_study")
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    assert client.get_metric_history(run.info.run_id, "train_loss") == []  # nothing was flushed

    result = train(_sqlite_cfg(synthetic_db, tmp_path, *run_cfg, "resume=true"))
    assert [h["round"] for h in result.history] == [3, 4]
    (again,) = _runs(tmp_path, "fail_study")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(h["round"], h["train_loss"]) for h in reference.history]


def test_an_interrupted_run_ends_killed(synthetic_db, tmp_path, monkeypatch):
    import pfl.fl.server as server

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=1"))
    (run,) = _runs(tmp_path, "fail_study")
    assert run.info.status == "KILLED"


def _log_in_process(args):
    uri, experiment, worker, n = args
    from mlflow.entities import Metric

    from pfl.tracking import _retry, open_client

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else None
    if exp_id is None:
        try:
            exp_id = _retry(client.create_experiment, experiment)
        except Exception:
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    run = _retry(client.create_run, exp_id, run_name=f"w{worker}")
    for step in range(n):
        _retry(client.log_batch, run.info.run_id,
               metrics=[Metric(f"m{k}", float(step * 10 + k), 0, step) for k in range(20)])
    _retry(client.set_terminated, run.info.run_id, "FINISHED")
    return run.info.run_id


def test_processes_creating_one_new_sqlite_store_at_once_lose_nothing(tmp_path):
    """The first jobs of a sweep race to create the schema, then write together."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        ids = pool.map(_log_in_process, [(uri, "race", w, 15) for w in range(2)])
    client = MlflowClient(tracking_uri=store_uri(uri))
    for run_id in ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(run.data.metrics) == 20
        assert [m.step for m in client.get_metric_history(run_id, "m7")] == list(range(15))


def test_store_uri_makes_sqlite_paths_absolute_with_a_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_uri("sqlite:///outputs/mlflow.db") == f"sqlite:///{tmp_path}/outputs/mlflow.db?timeout=60"
    assert store_uri("sqlite:////abs/m.db?timeout=5") == "sqlite:////abs/m.db?timeout=5"
    assert store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_terminated_run_ends_killed_not_running(synthetic_db, tmp_path, monkeypatch):
    """SIGTERM (a scheduler's cancel, `kill`) while training: the run must not stay RUNNING."""
    import pfl.fl.server as server
    from pfl.tracking import Terminated

    def sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(server, "evaluate", sigterm)
    before = signal.getsignal(signal.SIGTERM)  # e.g. Ray's, when Ray tests ran earlier in this process
    with pytest.raises(Terminated) as exc:
        train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=1", "study=term"))
    assert exc.value.code == 128 + signal.SIGTERM  # what the process exits with
    assert signal.getsignal(signal.SIGTERM) == before  # the run's handler is gone again
    (run,) = _runs(tmp_path, "term")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "Terminated: terminated by SIGTERM"


def _serve(uri: str, run_id: str, x):
    """The run's logged model loaded through mlflow.pyfunc, and its logits for `x`."""
    import mlflow
    import numpy as np

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store_uri(uri))
    try:
        served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        return served, np.asarray(served.predict(x))
    finally:  # not None: MLflow's default then is ./mlflow.db in the working directory
        mlflow.set_tracking_uri(previous)


def _final_model(client, run, cfg, dest: Path):
    """Oracle: the run's final global weights (its plain state dict) in a fresh torch module."""
    import torch

    from pfl.models import SmallCNN

    model = SmallCNN(**{k: v for k, v in cfg.model.items() if k != "_target_"})
    model.load_state_dict(torch.load(client.download_artifacts(run.info.run_id, "global_model.pt", str(dest))))
    return model.eval()


def test_the_logged_model_classifies_a_beat_through_mlflow_pyfunc(synthetic_db, tmp_path):
    import numpy as np
    import torch

    from pfl.run import load_federation

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri={uri}", "study=served")
    train(cfg)
    client = MlflowClient(tracking_uri=store_uri(uri))
    run = _only_run(client, "served")
    # A beat of a synthetic record, cut and normalized by the data pipeline the model trained on.
    beat = load_federation(cfg).clients[0].test.x[:1].numpy()
    served, logits = _serve(uri, run.info.run_id, beat)
    assert "model.pt2" in {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "model/data")}
    with torch.no_grad():
        expected = _final_model(client, run, cfg, tmp_path / "dl")(torch.from_numpy(beat)).numpy()
    assert logits.shape == (1, 5)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    # The signature says what to send: float32 (n, 1, 256) beats; the metadata names the classes.
    inputs = served.metadata.get_input_schema().inputs[0]
    assert inputs.shape == (-1, 1, 256) and str(inputs.type) == "float32"
    assert served.metadata.metadata["classes"] == ["N", "S", "V", "F", "Q"]
    # MLflow 3's model page: the logged model is the run's output at its last round, and READY.
    (logged,) = client.search_logged_models([run.info.experiment_id])
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(logged.model_id, int(cfg.federation.rounds))]
    assert (logged.source_run_id, logged.name, str(logged.status)) == (run.info.run_id, "model", "READY")


def test_a_model_trained_on_standardized_rr_is_served_on_the_raw_features(synthetic_db, tmp_path):
    """data.rr.standardize: the logged model takes the packed beats with their raw RR features
    and standardizes them itself, with the statistics the run logged."""
    import numpy as np
    import torch

    from pfl import config as cfgmod
    from pfl.run import load_federation

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    rr = ("data.features=[beat,rr]", "data.records=[s01,s02,s03]")
    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri={uri}", "study=served_rr",
                   "data.rr.standardize=true", *rr)
    train(cfg)
    client = MlflowClient(tracking_uri=store_uri(uri))
    run = _only_run(client, "served_rr")
    raw = load_federation(cfgmod.prepare(make_cfg(synthetic_db, tmp_path / "raw", *rr))).clients[0].test.x[:3].numpy()
    stats = json.loads(Path(client.download_artifacts(run.info.run_id, "partition_stats.json",
                                                      str(tmp_path / "dl"))).read_text())["rr_standardize"]
    served, logits = _serve(uri, run.info.run_id, raw)
    # Oracle: the run's final weights on the beats standardized by hand with the logged statistics.
    reference = _final_model(client, run, cfg, tmp_path / "dl")
    by_hand = raw.copy()
    by_hand[..., -6:] = (raw[..., -6:] - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    with torch.no_grad():
        expected = reference(torch.from_numpy(by_hand.astype(np.float32))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert served.metadata.metadata["rr_standardize"]["mean"] == stats["mean"]


def test_the_model_can_be_logged_as_pickle_and_serves_the_same_logits(synthetic_db, tmp_path):
    """logger.model_format=pickle: the cheaper format (no torch.export at run end) serves what
    the final weights compute."""
    import numpy as np
    import torch

    from pfl.run import load_federation

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri={uri}", "study=pickled",
                   "logger.model_format=pickle")
    train(cfg)
    client = MlflowClient(tracking_uri=store_uri(uri))
    run = _only_run(client, "pickled")
    # MLflow tells the formats apart by file: model.pth (pickle) or model.pt2 (torch.export).
    stored = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "model/data")}
    assert "model.pth" in stored and "model.pt2" not in stored
    beat = load_federation(cfg).clients[0].test.x[:1].numpy()
    _, logits = _serve(uri, run.info.run_id, beat)
    with torch.no_grad():
        expected = _final_model(client, run, cfg, tmp_path / "dl")(torch.from_numpy(beat)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_an_unknown_model_format_fails_before_training(synthetic_db, tmp_path):
    from pfl.errors import ConfigError

    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path}/s.db",
                   "logger.model_format=onnx")
    with pytest.raises(ConfigError, match=r"logger.model_format='onnx' is not allowed: expected one of pt2, pickle"):
        train(cfg)
    assert not (tmp_path / "s.db").exists()


def test_a_model_that_fails_to_log_is_marked_failed_with_its_run(synthetic_db, tmp_path, monkeypatch):
    """Not left PENDING: runs:/<id>/model would resolve to a model without files."""
    import mlflow.pytorch

    def broken(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(mlflow.pytorch, "log_model", broken)
    with pytest.raises(RuntimeError, match="export failed"):
        train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=1"))
    (run,) = _runs(tmp_path, "fail_study")
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert run.info.status == "FAILED" and logged.source_run_id == run.info.run_id
    assert str(logged.status) == "FAILED"


def test_a_run_inside_the_callers_own_mlflow_run_keeps_its_model(synthetic_db, tmp_path):
    """MLflow's active run belongs to the caller: pfl's model goes to pfl's run, not to it."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    client = MlflowClient(tracking_uri=store_uri(uri))
    outer_exp = client.get_experiment(client.create_experiment("notebook"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store_uri(uri))
    try:
        with mlflow.start_run(experiment_id=outer_exp.experiment_id) as outer:
            mlflow.log_metric("x", 1.0, step=0)
            train(_sqlite_cfg(synthetic_db, tmp_path, "federation.rounds=1"))
            assert mlflow.active_run().info.run_id == outer.info.run_id
    finally:
        mlflow.set_tracking_uri(previous)
    (run,) = _runs(tmp_path, "fail_study")
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [logged.model_id]
    assert not client.get_run(outer.info.run_id).outputs.model_outputs
    assert not client.search_logged_models([outer_exp.experiment_id])


@pytest.mark.parametrize("user, expected", [(None, True), ("false", False), ("true", True)])
def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(user, expected):
    """Importing pfl before mlflow leaves MLflow's own switch off, and a user's setting wins.
    The oracle is MLflow's reading of its variable, in a fresh process (it is read at import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    if user is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = user
    code = ("import pfl, mlflow\n"
            "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY\n"
            "print(MLFLOW_DISABLE_TELEMETRY.get())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(expected)
