"""`make bench`: where pfl spends its time, each figure beside its reference, in one run.

    python tests/bench.py                     # every section, real MIT-BIH data; writes BENCHMARKS.md
    python tests/bench.py --only overhead,ray --repeats 5
    python tests/bench.py --quick             # tiny synthetic smoke version (seconds)
    python tests/bench.py --list

Sections (run in this order; `--only` / `--skip` take their names):
  data       cold build of the beat cache for all records vs a warm load
  threads    torch intra-op threads and evaluation batch size on the training step / inference
  fixed      per-client fixed costs: Trainer construction, a fit's overhead, loader start-up,
             evaluation, MLflow logging, ledger hashing
  overhead   N rounds of pfl (Lightning, server loop, evaluation, MLflow, ledger, checkpoints)
             vs a plain PyTorch loop doing the same math on the same data, same process
  fast       trainer=fast against the plain loop, lever by lever; the per-patient round
  agreement  trainer=fast's final test metrics against the exact path's, 3 seeds, two settings
  strategies time per round of none / finetune / perfedavg FO and HF with the reference settings
             (seed_phase3), the extrapolated end-to-end study, and the ledger's share of a round
  scaling    time per round and peak RSS vs clients (per-patient and Dirichlet) and vs beats
  memory     peak RSS of experiment=patient_specific (few rounds)
  ray        federation.backend=ray vs serial on this machine, and the equivalence of metrics

Results go to a Markdown report (default BENCHMARKS.md at the repository root) and a JSON file
(default outputs/bench/results.json). `--only` merges its sections into an existing JSON from
the same machine and re-renders the whole report. Runs that need their own peak RSS or a clean
process (strategies, scaling, memory, ray) are subprocesses of this module (`--worker`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plain_loop import plain_federated, same_weights

from pfl.fl.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent
MARK = "@@PFL-BENCH@@"
SECTIONS = ("data", "threads", "fixed", "overhead", "fast", "agreement", "strategies", "scaling", "memory", "ray")
REFERENCE_MIN_PER_STRATEGY = (5.0, 7.0)  # the reference study's wall time per strategy, CPU
STUDY_ROUNDS = 20


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: after fork and exec, Linux carries the parent's
    high-water mark into the child's, so every subprocess would report at least the bench's."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- options


@dataclass
class Opts:
    quick: bool = False
    repeats: int = 3
    rounds: int = 2
    sections: tuple[str, ...] = SECTIONS
    data_dir: Path | None = None
    cache_dir: Path = REPO / "outputs" / "cache" / "beats"
    report: Path = REPO / "BENCHMARKS.md"
    results: Path = REPO / "outputs" / "bench" / "results.json"
    work: Path = REPO / "outputs" / "bench" / "work"
    threads: int | None = None
    timeout: int = 900
    max_minutes: float | None = None
    #: settings of the agreement section to measure (empty: all); the others keep earlier results
    agreement: tuple[str, ...] = ()
    #: more strategies for the strategies section: name -> overrides (any registered or plugin strategy)
    strategies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ref(self) -> list[str]:
        """The reference study's settings (seed_phase3), or a tiny synthetic stand-in."""
        if self.quick:
            return ["partition=patient", "model=cnn", "federation.local_epochs=1", "federation.batch_size=16"]
        if (REPO / "conf" / "experiment" / "seed_phase3.yaml").is_file():
            return ["experiment=seed_phase3"]
        return ["partition=hospitals", "model=cnn_lstm", "federation.local_epochs=5", "federation.batch_size=32",
                "federation.optimizer.lr=0.001"]

    def base(self, root: Path) -> list[str]:
        out = [f"data.root={self.data_dir}", f"data.cache_dir={self.cache_dir}", f"paths.root_dir={root}",
               "data.download=false", "trainer.progress=false"]
        if self.threads:
            out.append(f"trainer.threads={self.threads}")
        return out


def _default_data_dir() -> Path | None:
    env = os.environ.get("PFL_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "mitdb", REPO / "data" / "mitdb"]:
        if (cand / "RECORDS").is_file():
            return cand
    return None


def _synthetic_db(dest: Path) -> Path:
    """The 6-record synthetic database of the test suite (tests/synth.py), for --quick."""
    if (dest / "RECORDS").is_file():
        return dest
    import synth  # beside this file: tests/ is the script's directory, on sys.path

    return synth.write_synthetic_db(dest)


# --------------------------------------------------------------------------- config and runs


def compose_cfg(overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir

    from pfl.cli import CONF_DIR
    from pfl.shortforms import expand

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=expand(list(overrides)))


class Recorder(Callback):
    """Timestamps of the server's hooks, as an observer callback (first in the list); the time
    each other callback spends in each hook comes from the server's own `hook_seconds`."""

    def __init__(self):
        self.rounds: list[dict[str, Any]] = []
        self.run_start: float | None = None
        self.server = None
        self._mark = 0.0

    @property
    def callback_s(self) -> dict[str, float]:
        hooks = self.server.hook_seconds if self.server is not None else {}
        return {k: v for k, v in hooks.items() if not k.startswith(type(self).__name__ + ".")}

    def _round_end_s(self) -> float:
        return sum(v for k, v in self.callback_s.items() if k.endswith(".on_round_end"))

    def _close(self) -> None:
        """The previous round's end, once the callbacks after this one have run its on_round_end."""
        if self.rounds and "end" in self.rounds[-1] and "cb_end" not in self.rounds[-1]:
            r = self.rounds[-1]
            r["cb_end"] = r["end"] + self._round_end_s() - self._mark

    def on_run_start(self, server) -> None:
        self.server, self.run_start = server, time.perf_counter()

    def on_round_start(self, rnd: int, cids: list[str]) -> None:
        self._close()
        self.rounds.append({"rnd": rnd, "start": time.perf_counter(), "n_train": len(cids), "client_ends": []})

    def on_client_end(self, rnd: int, cid: str) -> None:
        if self.rounds:
            self.rounds[-1]["client_ends"].append(time.perf_counter())

    def on_round_end(self, info) -> None:
        self.rounds[-1].update(end=time.perf_counter(), rss_mb=rss_mb(), server_seconds=info.seconds)
        self._mark = self._round_end_s()

    def on_run_end(self, result) -> None:
        self._close()

    def round_rows(self) -> list[dict[str, float]]:
        rows = []
        for r in self.rounds:
            if "cb_end" not in r:
                continue
            ends = r["client_ends"]
            train_end = ends[r["n_train"] - 1] if len(ends) >= r["n_train"] else r["end"]
            rows.append({"round": r["rnd"], "wall_s": r["cb_end"] - r["start"], "train_s": train_end - r["start"],
                         "eval_s": r["end"] - train_end, "callbacks_s": r["cb_end"] - r["end"],
                         "rss_mb": r["rss_mb"], "clients": r["n_train"]})
        return rows


_ROOTS = iter(range(10 ** 9))


def fresh_root(opts: Opts, name: str) -> Path:
    """An empty output tree never used before in this process: MLflow keeps a database engine
    per store URI, so a store deleted and re-created under the same path breaks it."""
    root = opts.work / "runs" / f"{name}-{next(_ROOTS)}"
    shutil.rmtree(root, ignore_errors=True)
    return root


def shared_store(opts: Opts, name: str) -> str:
    """One MLflow store for a section's runs, as a study's jobs share one; created here, untimed
    (a new store's schema creation is measured once, in the fixed-costs section)."""
    from mlflow.tracking import MlflowClient

    d = fresh_root(opts, f"store-{name}")
    d.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return f"logger.tracking_uri={uri}"


def run_pfl(overrides: Sequence[str]) -> dict[str, Any]:
    """One pfl.run.train in this process, instrumented; its phases in seconds."""
    from rich.console import Console

    from pfl.run import train

    cfg = compose_cfg(overrides)
    rec = Recorder()
    t0 = time.perf_counter()
    result = train(cfg, console=Console(file=io.StringIO()), callbacks=[rec])
    t1 = time.perf_counter()
    rows = rec.round_rows()
    last = rec.rounds[-1]["cb_end"] if rec.rounds else t0
    return {
        "total_s": t1 - t0,
        "setup_s": (rec.run_start or t0) - t0,
        "rounds": rows,
        "finalize_s": t1 - last,
        "callbacks_s": dict(rec.callback_s),
        "metrics": result.metrics,
        "weights": result.global_weights,
        "train_loss": [h["train_loss"] for h in result.history],
    }


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = run_pfl(spec["overrides"])
    out.pop("weights")
    metrics = out.pop("metrics")
    keep = spec.get("metrics") or []
    out["metrics"] = {k: metrics[k] for k in keep if k in metrics}
    out["all_metrics_digest"] = _digest_metrics(metrics)
    out["wall_in_process_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_end_mb"] = rss_mb()
    return out


def _digest_metrics(metrics: dict[str, float]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps({k: repr(v) for k, v in sorted(metrics.items()) if k != "round_seconds"},
                                     sort_keys=True).encode()).hexdigest()


def run_worker(overrides: Sequence[str], opts: Opts, metrics: Sequence[str] = (), subprocess_always: bool = False
               ) -> dict[str, Any]:
    """pfl.run.train in a fresh interpreter: its own peak RSS and no state from earlier runs.

    --quick runs it in this process instead (a smoke test of the code path, not a measurement).
    """
    spec = json.dumps({"overrides": list(overrides), "metrics": list(metrics)})
    t0 = time.perf_counter()
    if opts.quick and not subprocess_always:
        out = json.loads(json.dumps(_worker(json.loads(spec)), default=float))
        out["process_wall_s"] = time.perf_counter() - t0
        return out
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", spec], capture_output=True, text=True,
                          timeout=opts.timeout, cwd=str(REPO))
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"bench worker failed ({' '.join(overrides)}):\n{proc.stderr[-3000:]}")
    out = json.loads(line[len(MARK):])
    out["process_wall_s"] = wall
    return out


def per_round(out: dict[str, Any], key: str = "wall_s", skip_first: bool = False) -> float:
    rows = out["rounds"][1:] if skip_first and len(out["rounds"]) > 1 else out["rounds"]
    return median([r[key] for r in rows])


# --------------------------------------------------------------------------- sections


def bench_data(opts: Opts) -> dict[str, Any]:
    """Cold build of the beat cache for every record in the database, then warm loads."""
    from pfl.data.sources import load_beats

    cold_dir = opts.work / "cache_cold"
    overrides = [f"data.root={opts.data_dir}", f"data.cache_dir={cold_dir}", "data.download=false"]
    if not opts.quick:
        overrides.append("data.exclude_paced=false")  # all 48 records
    cfg = compose_cfg(overrides)
    cold, warm = [], []
    beats = None
    for i in range(max(1, opts.repeats - 1) if not opts.quick else 1):
        shutil.rmtree(cold_dir, ignore_errors=True)
        t = time.perf_counter()
        beats = load_beats(cfg.data)
        cold.append(time.perf_counter() - t)
        log(f"data: cold build {i + 1}: {cold[-1]:.2f}s")
    for _ in range(max(3, opts.repeats + 2)):
        t = time.perf_counter()
        load_beats(cfg.data)
        warm.append(time.perf_counter() - t)
    size = sum(p.stat().st_size for p in cold_dir.rglob("*.npz"))
    shutil.rmtree(cold_dir, ignore_errors=True)
    # Setup steps after loading, on the reference partition: partition build and its digest.
    from pfl.data.partitions import build_federation

    ref = compose_cfg(opts.ref + opts.base(opts.work / "ref"))
    b = load_beats(ref.data)
    t = time.perf_counter()
    fed = build_federation(b, ref.partition, ref.seed)
    t_part = time.perf_counter() - t
    t = time.perf_counter()
    fed.digest()
    t_digest = time.perf_counter() - t
    return {"records": len(beats.records), "beats": len(beats), "cache_mb": size / 2 ** 20,
            "cold_s": cold, "warm_s": warm, "cold_median_s": median(cold), "warm_median_s": median(warm),
            "partition": str(ref.partition.name), "partition_build_s": t_part, "partition_digest_s": t_digest}


_STEP_SNIPPET = """
import json, sys, time, torch
import torch.nn.functional as F
from pfl.models import CNNLSTM, SmallCNN
torch.set_num_threads(int(sys.argv[2]))
m = {"cnn": SmallCNN, "cnn_lstm": CNNLSTM}[sys.argv[1]]()
opt = torch.optim.Adam(m.parameters(), 1e-3)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(32, 1, 256, generator=g), torch.randint(0, 5, (32,), generator=g)
n = int(sys.argv[3])
ts = []
for i in range(n + 2):
    t = time.perf_counter()
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
    ts.append(time.perf_counter() - t)
ts = sorted(ts[2:])
print(json.dumps(ts[len(ts) // 2]))
"""


def _step_subprocess(model: str, threads: int, steps: int, env: dict[str, str]) -> float:
    """Median step time in a fresh interpreter: OpenMP reads its settings when it loads."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([sys.executable, "-c", _STEP_SNIPPET, model, str(threads), str(steps)],
                          capture_output=True, text=True, env={**base, **env}, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def _step_pair(model: str, threads: int, steps: int) -> float:
    """Two runs at once, as two jobs of a parallel sweep on one machine: mean of their steps."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    cmd = [sys.executable, "-c", _STEP_SNIPPET, model, str(threads), str(steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(outs[0][1][-2000:] + outs[1][1][-2000:])
    return sum(float(o.strip().splitlines()[-1]) for o, _ in outs) / 2


def bench_threads(opts: Opts) -> dict[str, Any]:
    """Training step and inference at 1..cores threads, OpenMP's wait policy, eval batch size."""
    import torch

    from pfl.models import CNNLSTM, SmallCNN

    cores = len(os.sched_getaffinity(0))
    threads = [1] if opts.quick else sorted({1, cores})
    g = torch.Generator().manual_seed(0)
    n_eval = 512 if opts.quick else 4096
    xe = torch.randn(n_eval, 1, 256, generator=g)
    steps = 3 if opts.quick else 12
    before = torch.get_num_threads()
    out: dict[str, Any] = {"cores": cores, "step_ms": {}, "infer_us_per_beat": {}}
    models = {"cnn": SmallCNN} if opts.quick else {"cnn": SmallCNN, "cnn_lstm": CNNLSTM}
    # "spin": OpenMP's default (idle threads spin a while before sleeping), what pfl runs with.
    policies = {"spin": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
    for name, cls in models.items():
        for th in threads:
            for pol, env in policies.items():
                if th == 1 and pol != "spin":
                    continue  # one thread never waits for another
                key = f"{name}@{th}" + ("" if th == 1 else f" {pol}")
                out["step_ms"][key] = 1000 * median([_step_subprocess(name, th, steps, env)
                                                     for _ in range(max(1, opts.repeats - 1))])
            torch.set_num_threads(th)
            for bs in (256, 1024, 4096):
                if bs > n_eval:
                    continue
                m = cls().eval()
                with torch.inference_mode():
                    m(xe[:bs])  # warm-up; then one pass over 4096 beats is long enough to be stable
                    t = time.perf_counter()
                    for i in range(0, n_eval, bs):
                        m(xe[i:i + bs])
                out["infer_us_per_beat"][f"{name}@{th}/bs{bs}"] = (time.perf_counter() - t) / n_eval * 1e6
        if not opts.quick and cores > 1:
            out.setdefault("pair_step_ms", {})
            for th in threads:
                out["pair_step_ms"][f"{name}@{th}"] = 1000 * _step_pair(name, th, steps)
        log(f"threads: {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out["step_ms"].items()
                                              if k.startswith(name + "@")))
    torch.set_num_threads(before)
    return out


def bench_fixed(opts: Opts) -> dict[str, Any]:
    """Per-client fixed costs, each against the work it wraps."""
    import functools as ft

    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F

    from pfl.data.types import Split
    from pfl.fl.batches import BatchLoader
    from pfl.fl.trainer import ClientTrainer, LocalModule
    from pfl.ledger import weights_digest
    from pfl.metrics import confusion, predict
    from pfl.models import CNNLSTM, SmallCNN

    torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    reps = 5 if opts.quick else 30
    out: dict[str, Any] = {}
    ct = ClientTrainer()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **ct.kwargs)
        t.append(time.perf_counter() - t0)
    out["trainer_construction_ms"] = 1000 * median(t)

    class Tiny(torch.nn.Module):  # compute-free: what is left is the framework
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(256, 5)

        def forward(self, x):
            return self.lin(x.flatten(1))

    opt = ft.partial(torch.optim.Adam, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    n_steps = 20 if opts.quick else 200
    big = Split(torch.randn(32 * n_steps, 1, 256, generator=g), torch.randint(0, 5, (32 * n_steps,), generator=g))
    one = Split(big.x[:32], big.y[:32])

    def plain_fit(model, split):
        o = opt(model.parameters())
        model.train()
        for xb, yb in BatchLoader(split, 32, seed=1):
            loss = F.cross_entropy(model(xb), yb)
            o.zero_grad()
            loss.backward()
            o.step()

    def light_fit(model, split):
        ct.fit(LocalModule(model, opt), BatchLoader(split, 32, seed=1), epochs=1)

    res = {}
    for name, fn in (("plain", plain_fit), ("lightning", light_fit)):
        fn(Tiny(), one)
        m = Tiny()
        res[f"{name}_1step"] = median([_timed(fn, m, one) for _ in range(reps)])
        res[f"{name}_{n_steps}steps"] = median([_timed(fn, m, big) for _ in range(max(2, opts.repeats))])
    out["fit_fixed_ms"] = 1000 * (res["lightning_1step"] - res["plain_1step"])
    out["per_step_overhead_ms"] = 1000 * ((res[f"lightning_{n_steps}steps"] - res["lightning_1step"])
                                          - (res[f"plain_{n_steps}steps"] - res["plain_1step"])) / (n_steps - 1)
    out["fit_raw_s"] = res
    # Loader start-up: BatchLoader vs torch's DataLoader over a TensorDataset, first batch and epoch.
    from torch.utils.data import DataLoader, TensorDataset

    def first(it):
        t0 = time.perf_counter()
        next(iter(it))
        return time.perf_counter() - t0

    def epoch(it):
        t0 = time.perf_counter()
        for _ in it:
            pass
        return time.perf_counter() - t0

    bl = BatchLoader(big, 32, seed=1)
    dl = DataLoader(TensorDataset(big.x, big.y), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(1))
    out["loader_first_batch_ms"] = {"BatchLoader": 1000 * median([first(bl) for _ in range(reps)]),
                                    "DataLoader": 1000 * median([first(dl) for _ in range(reps)])}
    out["loader_epoch_ms"] = {"BatchLoader": 1000 * median([epoch(bl) for _ in range(3)]),
                              "DataLoader": 1000 * median([epoch(dl) for _ in range(3)]),
                              "batches": len(bl)}
    # Evaluation of one client's split: fixed part (a 1-beat split) and per beat.
    model = SmallCNN().eval()
    small = Split(big.x[:1], big.y[:1])

    def ev(split):
        t0 = time.perf_counter()
        confusion(predict(model, split.x, 4096), split.y, 5)
        return time.perf_counter() - t0

    out["eval_fixed_ms"] = 1000 * median([ev(small) for _ in range(reps)])
    # MLflow: one round's metrics into a fresh SQLite store; cost per call and per metric.
    out.update(_bench_mlflow(opts, reps))
    # Ledger: one SHA-256 digest of the reference model's weights.
    w = CNNLSTM().state_dict()
    out["weights_digest_ms"] = 1000 * median([_timed(weights_digest, w) for _ in range(reps)])
    out["weights_mb"] = sum(t.numel() * t.element_size() for t in w.values()) / 2 ** 20
    return out


def _timed(fn: Callable, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _bench_mlflow(opts: Opts, reps: int) -> dict[str, Any]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    d = Path(tempfile.mkdtemp(dir=opts.work))
    try:
        uri = f"sqlite:///{d / 'mlflow.db'}"
        t0 = time.perf_counter()
        client = MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("bench")
        run = client.create_run(exp)
        t_store = time.perf_counter() - t0
        out = {"mlflow_new_store_s": t_store}
        for n in (10, 100, 500):
            times = []
            for step in range(max(3, reps // 3)):
                ms = [Metric(f"client.c{i}.test.global.acc", 0.5, 0, step) for i in range(n)]
                t = time.perf_counter()
                client.log_batch(run.info.run_id, metrics=ms)
                times.append(time.perf_counter() - t)
            out[f"mlflow_log_{n}_metrics_ms"] = 1000 * median(times)
        out["mlflow_per_metric_ms"] = (out["mlflow_log_500_metrics_ms"] - out["mlflow_log_10_metrics_ms"]) / 490
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_overhead(opts: Opts) -> dict[str, Any]:
    """pfl's full run vs the plain loop, interleaved, same process, same data and threads."""
    out: dict[str, Any] = {}
    variants = {"reference model": [], "small model (cnn)": ["model=cnn"]}
    if opts.quick:
        variants = {"small model (cnn)": ["model=cnn"]}
    for label, extra in variants.items():
        root = fresh_root(opts, "overhead")
        rounds = opts.rounds
        common = opts.ref + opts.base(root) + ["strategy=none", f"federation.rounds={rounds}",
                                                "federation.local_epochs=1", *extra]
        pfl_over = common + [f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
        # Warm-up: imports, the first Lightning fit, a fresh MLflow store's schema migration.
        t = time.perf_counter()
        run_pfl(pfl_over + ["federation.rounds=1"])
        first_run = time.perf_counter() - t
        plain_federated(compose_cfg(common + ["federation.rounds=1"]))
        pfl_runs, plain_runs, pickled, traced = [], [], [], []
        identical = True
        # Two runs more than --repeats: the difference measured is small against the machine's noise.
        repeats = opts.repeats + (0 if opts.quick else 2)
        for i in range(repeats):
            p = run_pfl(pfl_over)
            q = plain_federated(compose_cfg(common))
            # The same run with the model logged as pickle: what torch.export (pt2) costs at run end.
            pickled.append(run_pfl(pfl_over + ["logger.model_format=pickle"])["total_s"])
            # The same run tracing the model afresh, as the first run of an architecture does (the
            # warm-up run stored its program in the export cache, which the timed runs load).
            traced.append(run_pfl(pfl_over + ["logger.export_cache=false"])["total_s"])
            same = same_weights(p["weights"], q.weights)
            scores = q.scores()
            same = same and all(p["metrics"].get(k) == v for k, v in scores.items()) and p["train_loss"] == q.train_loss
            identical = identical and same
            p.pop("weights")
            p.pop("metrics")
            pfl_runs.append(p)
            plain_runs.append({"total_s": q.total_s, "setup_s": q.setup_s, "rounds": q.rounds})
            log(f"overhead [{label}] {i + 1}/{repeats}: pfl {p['total_s']:.2f}s plain {q.total_s:.2f}s "
                f"(identical: {same})")
        loop = lambda r: sum(x["wall_s"] for x in r["rounds"])  # noqa: E731
        pt, qt = median([r["total_s"] for r in pfl_runs]), median([r["total_s"] for r in plain_runs])
        pl_, ql = median([loop(r) for r in pfl_runs]), median([loop(r) for r in plain_runs])
        cb = defaultdict(list)
        for r in pfl_runs:
            for k, v in r["callbacks_s"].items():
                cb[k].append(v)
        out[label] = {
            "kind": "hospitals",
            "overrides": common, "rounds": rounds, "identical": identical, "first_run_s": first_run,
            "pfl_total_s": [r["total_s"] for r in pfl_runs], "plain_total_s": [r["total_s"] for r in plain_runs],
            "pfl_total_median_s": pt, "plain_total_median_s": qt, "ratio_total": pt / qt,
            "pfl_pickle_total_s": pickled, "ratio_total_pickle": median(pickled) / qt,
            "pfl_traced_total_s": traced, "ratio_total_traced": median(traced) / qt,
            # The fastest run of each is the least disturbed by other processes on the machine.
            "ratio_total_min": min(r["total_s"] for r in pfl_runs) / min(r["total_s"] for r in plain_runs),
            "pfl_rounds_median_s": pl_, "plain_rounds_median_s": ql, "ratio_rounds": pl_ / ql,
            # Per interleaved repeat: how far the ratios move with the machine's noise.
            "pfl_rounds_s": [loop(r) for r in pfl_runs], "plain_rounds_s": [loop(r) for r in plain_runs],
            "pfl_setup_median_s": median([r["setup_s"] for r in pfl_runs]),
            "plain_setup_median_s": median([r["setup_s"] for r in plain_runs]),
            "pfl_finalize_median_s": median([r["finalize_s"] for r in pfl_runs]),
            "pfl_train_median_s": median([sum(x["train_s"] for x in r["rounds"]) for r in pfl_runs]),
            "plain_train_median_s": median([sum(x["train_s"] for x in r["rounds"]) for r in plain_runs]),
            "pfl_eval_median_s": median([sum(x["eval_s"] for x in r["rounds"]) for r in pfl_runs]),
            "plain_eval_median_s": median([sum(x["eval_s"] for x in r["rounds"]) for r in plain_runs]),
            "callbacks_median_s": {k: median(v) for k, v in cb.items()},
        }
    out["per-patient round"] = _patient_round(opts)
    return out


#: issue 14's targets: pfl's time over the plain loop's
OVERHEAD_TARGETS = {"ratio_total": 1.05, "ratio_rounds": 1.02}
PATIENT_ROUND_TARGET = 1.10


def _patient_round(opts: Opts) -> dict[str, Any]:
    """One FedAvg round of the per-patient federation (44 clients, the reference CNN-LSTM, 5 local
    epochs) in pfl and in the plain loop: the round's training and evaluation, setup excluded."""
    root = fresh_root(opts, "patient-round")
    if opts.quick:
        common = opts.ref + opts.base(root) + ["strategy=none", "federation.rounds=1"]
    else:
        common = ["experiment=patient_specific", *opts.base(root), "strategy=none", "federation.rounds=1",
                  "federation.local_epochs=5"]
    p = run_pfl(common + [f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}"])
    q = plain_federated(compose_cfg(common))
    same = same_weights(p["weights"], q.weights)
    (pr,), (qr,) = p["rounds"], q.rounds
    clients = pr["clients"]
    log(f"overhead [per-patient round, {clients} clients]: pfl {pr['wall_s']:.1f}s plain {qr['wall_s']:.1f}s "
        f"(identical: {same})")
    return {"kind": "patient", "overrides": common, "clients": clients, "identical": same,
            "pfl_round_s": pr["wall_s"], "plain_round_s": qr["wall_s"], "ratio_round": pr["wall_s"] / qr["wall_s"],
            "pfl_train_s": pr["train_s"], "plain_train_s": qr["train_s"],
            "pfl_eval_s": pr["eval_s"] + pr["callbacks_s"], "plain_eval_s": qr["eval_s"],
            "beats_evaluated": int(sum(len(c.val) + len(c.test) for c in _federation(common).clients))}


def _federation(overrides: Sequence[str]):
    from pfl import config as cfgmod
    from pfl.run import load_federation

    return load_federation(cfgmod.prepare(compose_cfg(overrides)))


# --------------------------------------------------------------------------- the fast path

#: each lever alone, then all together (trainer=fast); pfl runs with MLflow, like a study's
FAST_LEVERS = {
    "Trainer per fit (trainer.engine=trainer), all cores": ["trainer.engine=trainer"],
    "exact (default: Fabric engine, all cores)": [],
    "torch.compile (fabric, inductor)": ["trainer.engine=fabric", "trainer.compile=true"],
    "bf16 autocast (fabric)": ["trainer.engine=fabric", "trainer.precision=bf16-mixed"],
    "fused optimizer (fabric)": ["trainer.engine=fabric", "trainer.fused_optimizer=true"],
    "2 worker processes x 1 thread": ["trainer.workers=2", "trainer.threads=1"],
    "trainer=fast (all kept levers)": ["trainer=fast"],
    # trainer=fast's two model-dependent keys (conf/trainer_model/), each combination set explicitly
    "trainer=fast, bf16 + spread threads": ["trainer=fast", "trainer.precision=bf16-mixed",
                                            "trainer.spread_threads=true"],
    "trainer=fast, bf16, no spread threads": ["trainer=fast", "trainer.precision=bf16-mixed",
                                              "trainer.spread_threads=false"],
    "trainer=fast, fp32 + spread threads": ["trainer=fast", "trainer.precision=32-true",
                                            "trainer.spread_threads=true"],
    "trainer=fast, fp32, no spread threads": ["trainer=fast", "trainer.precision=32-true",
                                              "trainer.spread_threads=false"],
}
FAST_TARGET = 1.5  # x faster per FedAvg round than the plain loop
PATIENT_TARGET = 2.0  # x faster per-patient round than the exact path
#: |fast - exact| of the final test metrics (mean over clients, fraction) that counts as agreement
FAST_TOLERANCE = {"test.global.acc.mean": 0.005, "test.global.f1.mean": 0.01}


def busier_share(sizes: Sequence[int], workers: int) -> float:
    """The share of the training beats on the busiest of `workers` processes when clients go out
    largest first to whichever worker is idle (pfl.fl.workers), time taken as proportional to beats."""
    load = [0] * max(int(workers), 1)
    for n in sorted(sizes, reverse=True):
        load[load.index(min(load))] += n
    return max(load) / max(sum(sizes), 1)


def spread_shares(sizes: Sequence[int], workers: int) -> tuple[float, float]:
    """With trainer.spread_threads (pfl.fl.workers.thread_plan): the share of the training beats
    on the busier worker before the left-over client starts, and that client's share, which
    then trains on every core; (busier_share, 0) where there is none."""
    from pfl.fl.workers import thread_plan

    order, _, tail = thread_plan(sizes, workers, 1, True)
    if not tail:
        return busier_share(sizes, workers), 0.0
    last, total = order[-1], max(sum(sizes), 1)
    rest = [n for i, n in enumerate(sizes) if i != last]
    return busier_share(rest, workers) * sum(rest) / total, sizes[last] / total


def _rounds_s(out: dict[str, Any], skip_first: bool = True) -> float:
    return per_round(out, skip_first=skip_first)


def bench_fast(opts: Opts) -> dict[str, Any]:
    """The fast path against the plain loop: each lever per FedAvg round, then trainer=fast."""
    from pfl.fl.trainer import cpu_supports_bf16

    out: dict[str, Any] = {"bf16_native": cpu_supports_bf16(), "levers": {}}
    store = shared_store(opts, "fast")
    rounds = max(opts.rounds, 3)  # the first round (worker start, compilation) is left out
    models = {"reference model": [], "small model (cnn)": ["model=cnn"]}
    if opts.quick:
        models, rounds = {"small model (cnn)": ["model=cnn"]}, 2
    for label, extra in models.items():
        root = fresh_root(opts, "fast")
        common = opts.ref + opts.base(root) + ["strategy=none", f"federation.rounds={rounds}",
                                                "federation.local_epochs=1", *extra]
        plain_cfgs = {"plain loop, all cores": common, "plain loop, 1 thread": common + ["trainer.threads=1"]}
        levers = dict(FAST_LEVERS)
        if opts.quick:
            levers = {k: v for k, v in levers.items() if "compile" not in k}
        # Warm-up: imports, first fits, the first compilation (its cost is reported apart).
        t = time.perf_counter()
        run_pfl(common + [store, "federation.rounds=1"])
        plain_federated(compose_cfg(common + ["federation.rounds=1"]))
        warm = time.perf_counter() - t
        times: dict[str, list[float]] = defaultdict(list)
        first: dict[str, list[float]] = defaultdict(list)
        for i in range(opts.repeats):
            for name, cfg_over in plain_cfgs.items():
                q = plain_federated(compose_cfg(cfg_over))
                times[name].append(median([r["wall_s"] for r in q.rounds[1:]] or [q.rounds[0]["wall_s"]]))
            for name, lever in levers.items():
                r = run_pfl(common + [store, *lever])
                times[name].append(_rounds_s(r))
                first[name].append(r["rounds"][0]["wall_s"])
            log(f"fast [{label}] {i + 1}/{opts.repeats}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.2f}s"
                                                                        for k, v in times.items()))
        base = median(times["plain loop, all cores"])
        sizes = [len(c.train) for c in _federation(common).training_clients]
        fast_cfg = compose_cfg(common + ["trainer=fast"]).trainer
        out["levers"][label] = {
            "overrides": common, "rounds": rounds, "warmup_s": warm, "client_beats": sizes,
            "preset": {"precision": fast_cfg.precision, "spread_threads": bool(fast_cfg.spread_threads)},
            "busier_share": busier_share(sizes, len(os.sched_getaffinity(0))), "workers": len(os.sched_getaffinity(0)),
            "spread_shares": spread_shares(sizes, len(os.sched_getaffinity(0))),
            "round_s": {k: median(v) for k, v in times.items()}, "round_s_all": dict(times),
            "first_round_s": {k: median(v) for k, v in first.items()},
            "speedup_vs_plain": {k: base / median(v) for k, v in times.items()},
        }
    # The per-patient federation (44 clients, reference model): exact vs fast, and fast with the
    # test split evaluated only where it is reported (the last round).
    root = fresh_root(opts, "fast-patient")
    prounds = 3
    pat = opts.base(root) + ["partition=patient", "strategy=none", f"federation.rounds={prounds}",
                             "federation.local_epochs=1", store]
    pat += ["model=cnn", "federation.batch_size=16"] if opts.quick else ["model=cnn_lstm"]
    variants = {"exact": [], "trainer=fast": ["trainer=fast"],
                "trainer=fast, test at the last round only": ["trainer=fast", f"federation.test_every={prounds}"]}
    runs: dict[str, dict] = {}
    for name, extra in variants.items():
        r = run_pfl(pat + extra)
        mean = {key: statistics.fmean(x[key] for x in r["rounds"]) for key in ("wall_s", "train_s", "eval_s")}
        runs[name] = {"round_s": mean["wall_s"], "train_s": mean["train_s"], "eval_s": mean["eval_s"],
                      "clients": r["rounds"][0]["clients"], "rounds_s": [x["wall_s"] for x in r["rounds"]],
                      "test_f1": r["metrics"]["test.global.f1.mean"]}
        log(f"fast per-patient {name}: {runs[name]['round_s']:.2f}s per round")
    out["patient"] = runs
    out["patient_rounds"] = prounds
    out["patient_overrides"] = pat
    out["patient_speedup"] = runs["exact"]["round_s"] / runs["trainer=fast"]["round_s"]
    out["patient_speedup_test_last"] = (runs["exact"]["round_s"]
                                        / runs["trainer=fast, test at the last round only"]["round_s"])
    return out


def agreement_settings(opts: Opts) -> dict[str, tuple[str, list[str]]]:
    """Where the fast path's final metrics are compared with the exact path's (name -> label,
    overrides): the reference study's settings, and the clinical inputs of the results preset,
    each 5 rounds x 5 local epochs (the reference study's local epochs), long enough for
    training to settle; and the reference study's own budget (20 rounds x 5 epochs: the run
    the fast path stands in for), where 5 rounds can leave a model at the all-N solution."""
    if opts.quick:
        return {"reference": ("tiny synthetic", [*opts.ref, "federation.rounds=2"])}
    budget = ["federation.rounds=5", "federation.local_epochs=5"]
    return {"reference": ("reference settings (seed_phase3: CNN-LSTM, Adam)", [*opts.ref, *budget]),
            "reference_full": ("reference settings at the study's budget (seed_phase3: 20 rounds x 5 epochs)",
                               [*opts.ref, "federation.rounds=20", "federation.local_epochs=5"]),
            "clinical": ("clinical inputs (experiment=clinical: two leads + RR, weighted loss, SGD)",
                         ["experiment=clinical", "partition=hospitals", *budget])}


def bench_agreement(opts: Opts) -> dict[str, Any]:
    """trainer=fast against the exact path: final test metrics over 3 seeds, in each setting.

    Beside it a control: the exact path on another number of threads, fp32 throughout, whose
    only difference is the order in which the kernels sum. How far that lands from the exact run
    says how much of the fast path's distance any change of the arithmetic would bring."""
    from pfl.fl.trainer import cpu_supports_bf16

    store = shared_store(opts, "agreement")
    seeds = (0,) if opts.quick else (0, 1, 2)
    out: dict[str, Any] = {"bf16_native": cpu_supports_bf16(), "tolerance": FAST_TOLERANCE, "settings": {}}
    control_threads = 2 if (opts.threads or os.cpu_count() or 1) == 1 else 1
    out["control"] = f"trainer.threads={control_threads}"
    for name, (label, over) in agreement_settings(opts).items():
        if opts.agreement and name not in opts.agreement:
            continue
        rows = []
        for seed in seeds:
            common = [*over, *opts.base(fresh_root(opts, "agreement")), "strategy=none", f"seed={seed}", store]
            exact = run_pfl(common)["metrics"]
            fast = run_pfl(common + ["trainer=fast"])["metrics"]
            control = run_pfl(common + [out["control"]])["metrics"]
            row: dict[str, Any] = {"seed": seed, "only_n": {"exact": only_n(exact), "fast": only_n(fast)}}
            for k in FAST_TOLERANCE:
                row[k] = {"exact": exact[k], "fast": fast[k], "diff": abs(exact[k] - fast[k]),
                          "control": control[k], "control_diff": abs(exact[k] - control[k])}
            rows.append(row)
            log(f"agreement [{name}] seed {seed}: "
                + ", ".join(f"{k} {v['diff']:.4f} (control {v['control_diff']:.4f})"
                            for k, v in row.items() if k in FAST_TOLERANCE))
        spread = {k: statistics.stdev([r[k]["exact"] for r in rows]) if len(rows) > 1 else float("nan")
                  for k in FAST_TOLERANCE}
        out["settings"][label] = {"overrides": over, "rows": rows, "exact_seed_std": spread,
                                  "when": time.strftime("%Y-%m-%d %H:%M"),
                                  "holds": all(r[k]["diff"] <= t for r in rows for k, t in FAST_TOLERANCE.items())}
    return out


def only_n(metrics: dict[str, Any]) -> bool:
    """Whether a run's model called every test beat N: pooled test F1 0 for every other class
    (a degenerate model; two of them agree whatever their precision)."""
    other = [v for k, v in metrics.items() if k.startswith("test.global.f1_") and k.endswith(".pooled")
             and k[len("test.global.f1_"):-len(".pooled")] in ("S", "V", "F", "Q")]
    return bool(other) and all(v == 0 for v in other)


def merge_agreement(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`--agreement clinical` re-measures one setting: the other settings keep their earlier rows
    (same machine; each setting carries the date it was measured)."""
    if not previous:
        return new
    return {**new, "settings": {**previous.get("settings", {}), **new["settings"]}}


def _md_agreement(o: dict[str, Any]) -> list[str]:
    tol = ", ".join(f"{k} {100 * v:.1f} points" for k, v in o["tolerance"].items())
    out = ["## 8. Fast path agreement: final test metrics of trainer=fast against the exact path", "",
           "Same seeds, same settings, FedAvg; the exact path is the default (fp32, deterministic, all cores), "
           f"trainer=fast trains in bf16 autocast{'' if o['bf16_native'] else ' (fp32 fallback here: no native bf16)'} "
           f"in one-thread worker processes. Tolerance: {tol} (absolute, on the mean over clients). For scale, the "
           "exact path's own sample std over the seeds is given: two fp32 runs that differ only in the seed differ "
           f"by about that much. The control is the exact path with `{o.get('control', 'trainer.threads=1')}`: fp32 "
           "too, the same seeds and batches, only the kernels' order of summation differs; its distance from the "
           "exact run is what any change of the arithmetic brings.", ""]
    for label, r in o["settings"].items():
        over = " ".join(x for x in r["overrides"] if not x.startswith(("data.", "paths.")))
        out += [f"**{label}** (`{over}`; measured {r.get('when', '-')}):", "",
                "| seed | " + " | ".join(f"{k} exact / fast / abs diff | control / abs diff" for k in o["tolerance"])
                + " |", "|---|" + "---|---|" * len(o["tolerance"])]

        def control(x: dict[str, float]) -> str:
            return f"{x['control']:.4f} / {x['control_diff']:.4f}" if "control" in x else "-"
        for row in r["rows"]:
            out.append(f"| {row['seed']} | " + " | ".join(
                f"{row[k]['exact']:.4f} / {row[k]['fast']:.4f} / {row[k]['diff']:.4f} | {control(row[k])}"
                for k in o["tolerance"]) + " |")
        out += ["| exact, std over seeds | " + " | ".join(f"{r['exact_seed_std'][k]:.4f} | -" for k in o["tolerance"])
                + " |", "", f"Within the tolerance on every seed: **{'yes' if r['holds'] else 'no'}**."]
        worst = _worst_control(r, o["tolerance"])
        if worst:
            out.append(f"The control's largest distance from the exact run: {worst} points.")
        trivial = _trivial_seeds(r)
        if trivial:
            out.append(f"On seed(s) {', '.join(map(str, trivial))} both paths' models call every test beat N "
                       "(pooled test F1 0 for S, V, F and Q): their metrics agree whatever the arithmetic, so those "
                       "seeds say nothing about the tolerance.")
        out.append("")
    return out


def _worst_control(r: dict[str, Any], tolerance: dict[str, float]) -> str:
    """The control's largest distance per metric ("acc 0.12, f1 0.40"), or "" for rows without it."""
    if not all("control_diff" in row[k] for row in r["rows"] for k in tolerance):
        return ""
    return ", ".join(f"{k.split('.')[2]} {100 * max(row[k]['control_diff'] for row in r['rows']):.2f}"
                     for k in tolerance)


def _trivial_seeds(r: dict[str, Any]) -> list[int]:
    return [row["seed"] for row in r["rows"] if row.get("only_n", {}).get("exact") and row["only_n"].get("fast")]


def bench_gpu(opts: Opts) -> int:
    """experiment=seed_phase3 on the GPU (trainer=gpu, FedAvg): rounds per second, printed."""
    import torch

    if not torch.cuda.is_available():
        print("bench --gpu: skipped: torch sees no CUDA GPU (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}). Run it on a machine with one; CI is CPU-only.")
        return 0
    data = opts.data_dir or _default_data_dir()
    if data is None:
        print("error: no MIT-BIH data: set PFL_DATA_DIR or pass --data-dir", file=sys.stderr)
        return 2
    opts.data_dir = data
    import pfl  # noqa: F401  (config resolvers)

    rounds = max(opts.rounds, 3)
    over = ["experiment=seed_phase3", "trainer=gpu", "strategy=none", f"federation.rounds={rounds}",
            *opts.base(fresh_root(opts, "gpu")), "logger=none"]
    r = run_pfl(over)
    per = per_round(r, skip_first=True)
    print(f"seed_phase3 (FedAvg, {rounds} rounds x 5 local epochs) on {torch.cuda.get_device_name()}: "
          f"{1 / per:.3f} rounds/s ({per:.2f} s per round after the first; first round "
          f"{r['rounds'][0]['wall_s']:.2f} s; whole run {r['total_s']:.1f} s)")
    return 0


def _md_fast(o: dict[str, Any]) -> list[str]:
    out = ["## 7. Fast path: pfl against the plain PyTorch loop, lever by lever", "",
           "Per FedAvg round, median of rounds 2 and later (round 1 holds worker start-up and compilation), "
           "medians of the repeats, runs interleaved. The plain loop (`plain_federated`) does the same optimizer "
           "steps on the same batches as pfl; it is what PFLlib and FL-bench run. pfl runs log to MLflow. "
           f"bf16 native on this CPU: **{'yes' if o['bf16_native'] else 'no'}**"
           + ("" if o["bf16_native"] else " (no AVX-512 BF16 / AMX): `precision=bf16-mixed` falls back to fp32 "
              "with a log line, so that row measures the fallback, not bf16") + ".", "",
           "| target | measured | met |", "|---|---|---|"]
    for label, r in o["levers"].items():
        x = r["speedup_vs_plain"]["trainer=fast (all kept levers)"]
        out.append(f"| trainer=fast >= {FAST_TARGET:.1f}x the plain loop per round, {label} | {x:.2f}x | "
                   f"{'yes' if x >= FAST_TARGET else '**no**'} |")
    ps, pt = o["patient_speedup"], o["patient_speedup_test_last"]
    out += [f"| per-patient round >= {PATIENT_TARGET:.1f}x faster than the exact path | {ps:.2f}x (same "
            f"evaluation work); {pt:.2f}x with test only at the last round | "
            f"{'yes' if max(ps, pt) >= PATIENT_TARGET else '**no**'} |",
            "| final test metrics within tolerance over 3 seeds | section 8 | |", ""]
    for label, r in o["levers"].items():
        rs = r["round_s"]
        one, allc = rs.get("plain loop, 1 thread"), rs.get("plain loop, all cores")
        if one and allc:
            out.append(f"- {label}: the plain loop on all cores is {one / allc:.2f}x its 1-thread speed; two "
                       f"1-thread worker processes reach {one / rs['2 worker processes x 1 thread']:.2f}x. "
                       "The all-core loop already keeps both cores busy; an engine doing the same steps can "
                       "gain only the time that loop leaves them idle.")
            share = r.get("busier_share")
            if share:
                out.append(f"  Ceiling of the worker processes: the busier of {r['workers']} trains "
                           f"{share * sum(r['client_beats']):,.0f} of the {sum(r['client_beats']):,} training beats "
                           f"({', '.join(f'{n:,}' for n in r['client_beats'])} per client), so an engine that "
                           "trains each client in one 1-thread process at the plain loop's cost per step "
                           f"finishes a round no sooner than {share:.3f} x the 1-thread loop's: at most "
                           f"{allc / (one * share):.2f}x the all-core loop, before any overhead. Beyond that only "
                           "cheaper steps pay (bf16, the fused optimizer).")
            wave, tail = r.get("spread_shares") or (share, 0.0)
            if tail:
                out.append(f"  With spread threads (`trainer.spread_threads`) the left-over client "
                           f"({tail:.3f} of the beats) trains last on every core: no sooner than {wave:.3f} x the "
                           f"1-thread loop's + {tail:.3f} x the all-core loop's, at most "
                           f"{allc / (one * wave + allc * tail):.2f}x the all-core loop.")
    out.append("")
    for label, r in o["levers"].items():
        preset = r.get("preset")
        out += [f"**{label}** (`{' '.join(x for x in r['overrides'] if not x.startswith(('data.', 'paths.')))}`)"
                + (f"; trainer=fast for this model: `trainer.precision={preset['precision']} "
                   f"trainer.spread_threads={str(preset['spread_threads']).lower()}`" if preset else "") + ":",
                "", "| variant | s / round | first round s | x vs plain loop (all cores) |", "|---|---:|---:|---:|"]
        for k, v in r["round_s"].items():
            fr = r["first_round_s"].get(k)
            out.append(f"| {k} | {v:.2f} | {_f(fr) if fr is not None else '-'} | {r['speedup_vs_plain'][k]:.2f}x |")
        out.append("")
    p = o["patient"]
    out += ["**Per-patient federation** (`partition=patient`, "
            f"{int(p['exact']['clients'])} clients, "
            f"{'small model' if 'model=cnn' in o['patient_overrides'] else 'reference model'}, 1 local epoch, FedAvg, {o['patient_rounds']} "
            "rounds; mean over the rounds, one run each):", "",
            "| path | s / round | train s | evaluation s | each round s | final test macro-F1 |",
            "|---|---:|---:|---:|---|---:|"]
    for k, v in p.items():
        out.append(f"| {k} | {v['round_s']:.2f} | {v['train_s']:.2f} | {v['eval_s']:.2f} | "
                   f"{', '.join(f'{x:.1f}' for x in v['rounds_s'])} | {v['test_f1']:.4f} |")
    out += ["", f"Against the exact path: trainer=fast {o['patient_speedup']:.2f}x per round; with the test split "
            f"evaluated only at the last round (`federation.test_every`) {o['patient_speedup_test_last']:.2f}x.", ""]
    return out


STRATEGIES = {"none": ["strategy=none"], "finetune": ["strategy=finetune"],
              "perfedavg-fo": ["strategy=perfedavg", "strategy.variant=fo"],
              "perfedavg-hf": ["strategy=perfedavg", "strategy.variant=hf"]}


def bench_strategies(opts: Opts) -> dict[str, Any]:
    """Reference settings (seed_phase3) for a few rounds per strategy, each in a fresh process."""
    out: dict[str, Any] = {"settings": opts.ref, "rounds": opts.rounds, "runs": {}}
    chosen = {k: v for k, v in STRATEGIES.items() if not opts.quick or k in ("none", "perfedavg-fo")}
    chosen.update(opts.strategies)
    store = shared_store(opts, "strategies")
    for name, extra in chosen.items():
        root = fresh_root(opts, f"strategy-{name}")
        r = run_worker(opts.ref + opts.base(root) + extra + [f"federation.rounds={opts.rounds}", store], opts)
        out["runs"][name] = r
        log(f"strategies: {name}: {per_round(r):.1f}s/round, process {r['process_wall_s']:.1f}s")
    none = per_round(out["runs"]["none"])
    for r in out["runs"].values():
        r["round_median_s"] = per_round(r)
        r["ratio_vs_none"] = r["round_median_s"] / none
        ledger = r["callbacks_s"].get("Ledger.on_round_end", 0.0) / max(len(r["rounds"]), 1)
        r["ledger_per_round_s"] = ledger
        r["ledger_share"] = ledger / r["round_median_s"]
        # The study: process start-up and setup once, 20 rounds, the end-of-run artifacts.
        fixed = r["process_wall_s"] - sum(x["wall_s"] for x in r["rounds"])
        r["fixed_s"] = fixed
        r["study_extrapolated_s"] = fixed + STUDY_ROUNDS * r["round_median_s"]
    study = [s for s in ("none", "finetune", "perfedavg-fo") if s in out["runs"]]
    out["study_strategies"] = study
    out["seed_phase3_extrapolated_s"] = sum(out["runs"][s]["study_extrapolated_s"] for s in study)
    return out


def bench_scaling(opts: Opts) -> dict[str, Any]:
    """Clients and beats, with the small model so the framework's own costs are not hidden."""
    from pfl.data.sources import load_beats

    cfg = compose_cfg(opts.base(opts.work / "x"))
    records = sorted(load_beats(cfg.data).records)
    counts = [2, 6] if opts.quick else [3, 11, 22, 44]
    counts = [n for n in counts if n <= len(records)]
    common = ["partition=patient", "model=cnn", "strategy=none", "federation.local_epochs=1",
              "federation.batch_size=32", f"federation.rounds={opts.rounds}"]
    out: dict[str, Any] = {"settings": common, "clients": {}, "beats": {}, "dirichlet": {}}
    store = shared_store(opts, "scaling")

    def go(key: str, label: Any, extra: list[str], tracked: bool = True) -> None:
        root = fresh_root(opts, f"scaling-{key}")
        r = run_worker(opts.base(root) + common + ([store] if tracked else ["logger=none"]) + extra, opts)
        row = {"round_s": per_round(r), "train_s": per_round(r, "train_s"), "eval_s": per_round(r, "eval_s"),
               "callbacks_s": per_round(r, "callbacks_s"), "peak_rss_mb": r["peak_rss_mb"],
               "setup_s": r["setup_s"], "clients": r["rounds"][0]["clients"],
               "rss_per_round_mb": [x["rss_mb"] for x in r["rounds"]],
               "mlflow_round_s": r["callbacks_s"].get("MlflowTracker.on_round_end", 0.0) / len(r["rounds"]),
               "ledger_round_s": r["callbacks_s"].get("Ledger.on_round_end", 0.0) / len(r["rounds"]),
               "run_end_s": r["callbacks_s"].get("MlflowTracker.on_run_end", 0.0)}
        row["train_beats"] = _train_beats(opts.base(root) + common + extra)
        out[key][str(label)] = row
        log(f"scaling {key}={label}: {row['round_s']:.2f}s/round ({row['train_beats']} training beats), "
            f"peak {row['peak_rss_mb']:.0f} MB")

    for n in counts:
        recs = "[" + ",".join(f"'{r}'" for r in records[:n]) + "]"
        go("clients", n, [f"partition.records={recs}"])
    for minutes in ([1] if opts.quick else [1.25, 5, 10]):
        # No tracking here: the end-of-run artifacts are measured with the client counts.
        go("beats", minutes, [f"partition.train_minutes={minutes}"], tracked=False)
    n_dir = 8 if opts.quick else 300
    # alpha=5: with 300 clients and AAMI's class imbalance, smaller alphas leave clients nearly empty.
    # One round: 300 clients' end-of-run artifacts alone take most of a minute (see the table).
    go("dirichlet", n_dir, ["partition=dirichlet", f"partition.n_clients={n_dir}", "partition.max_beats=null",
                            "partition.alpha=5", f"partition.min_samples={20 if opts.quick else 100}",
                            "federation.rounds=1"])
    return out


@functools.lru_cache(maxsize=64)
def _train_beats_cached(key: str) -> int:
    from pfl.data.partitions import build_federation
    from pfl.data.sources import load_beats

    cfg = compose_cfg(json.loads(key))
    fed = build_federation(load_beats(cfg.data), cfg.partition, cfg.seed)
    return sum(len(c.train) for c in fed.training_clients)


def _train_beats(overrides: list[str]) -> int:
    return _train_beats_cached(json.dumps(overrides))


def bench_memory(opts: Opts) -> dict[str, Any]:
    """Peak RSS of the patient-specific study's run (a few rounds), in a fresh process."""
    if opts.quick:
        over = ["partition=patient", "model=cnn", "federation.local_epochs=1"]
    elif (REPO / "conf" / "experiment" / "patient_specific.yaml").is_file():
        over = ["experiment=patient_specific", "federation.local_epochs=1"]
    else:
        over = ["partition=patient", "model=cnn_lstm", "federation.local_epochs=1", "federation.batch_size=32"]
    root = fresh_root(opts, "memory")
    # FedAvg: personalizing strategies add one working copy of the model and an optimizer state.
    over = over + opts.base(root) + ["strategy=none", f"federation.rounds={opts.rounds}"]
    r = run_worker(over, opts, subprocess_always=True)
    log(f"memory: peak {r['peak_rss_mb']:.0f} MB, {per_round(r):.1f}s/round")
    return {"overrides": over, "peak_rss_mb": r["peak_rss_mb"], "rss_per_round_mb": [x["rss_mb"] for x in r["rounds"]],
            "round_s": per_round(r), "train_s": per_round(r, "train_s"), "eval_s": per_round(r, "eval_s"),
            "setup_s": r["setup_s"], "clients": r["rounds"][0]["clients"], "process_wall_s": r["process_wall_s"]}


def bench_ray(opts: Opts) -> dict[str, Any]:
    """Serial (default threads, and 1 thread) vs Ray workers of 1 thread, same config."""
    try:
        import ray
    except ImportError:
        return {"skipped": 'ray is not installed (pip install "pfl[ray]")'}
    cores = len(os.sched_getaffinity(0))
    cases = {"hospitals, reference model": opts.ref + ["federation.local_epochs=1"]} if not opts.quick else {}
    cases["per-patient clients, small model"] = ["partition=patient", "model=cnn", "federation.local_epochs=1",
                                                 "federation.batch_size=32"]
    out: dict[str, Any] = {"cores": cores, "ray_version": ray.__version__, "cases": {}}
    keep = ["test.global.acc.mean", "test.global.f1.mean"]
    # Round 1 starts Ray and its actors, round 2 still sends some clients to actors that have not
    # seen them; the steady figure is the median of rounds 2 and later.
    rounds = max(3, opts.rounds + 1) if not opts.quick else 2
    for label, case in cases.items():
        res = {}
        variants = {f"serial, {cores} threads": [f"trainer.threads={cores}"], "serial, 1 thread": ["trainer.threads=1"],
                    f"ray, {cores} workers x 1 thread": ["trainer.threads=1", "federation.backend=ray"]}
        for name, extra in variants.items():
            root = fresh_root(opts, "ray")
            over = [o for o in opts.base(root) if not o.startswith("trainer.threads")]
            r = run_worker(over + case + ["strategy=none", "logger=none", f"federation.rounds={rounds}"] + extra,
                           opts, metrics=keep)
            res[name] = {"round1_s": r["rounds"][0]["wall_s"], "round_steady_s": per_round(r, skip_first=True),
                         "train_steady_s": per_round(r, "train_s", skip_first=True),
                         "eval_steady_s": per_round(r, "eval_s", skip_first=True),
                         "process_wall_s": r["process_wall_s"], "digest": r["all_metrics_digest"],
                         "metrics": r["metrics"]}
            log(f"ray [{label}] {name}: steady {res[name]['round_steady_s']:.2f}s/round, "
                f"first {res[name]['round1_s']:.2f}s")
        names = list(variants)
        serial_default, serial_1, ray_ = (res[n] for n in names)
        out["cases"][label] = {
            "overrides": case, "rounds": rounds, "variants": res,
            "speedup_vs_serial_default": serial_default["round_steady_s"] / ray_["round_steady_s"],
            "speedup_vs_serial_1thread": serial_1["round_steady_s"] / ray_["round_steady_s"],
            "train_speedup_vs_serial_default": serial_default["train_steady_s"] / ray_["train_steady_s"],
            "startup_s": ray_["round1_s"] - ray_["round_steady_s"],
            "identical_to_serial_1thread": serial_1["digest"] == ray_["digest"],
        }
    return out


RUNNERS: dict[str, Callable[[Opts], dict[str, Any]]] = {
    "data": bench_data, "threads": bench_threads, "fixed": bench_fixed, "overhead": bench_overhead,
    "fast": bench_fast, "agreement": bench_agreement, "strategies": bench_strategies, "scaling": bench_scaling, "memory": bench_memory, "ray": bench_ray,
}


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "lightning": pl.__version__,
                            "cpu_count": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
                            "torch_threads_default": torch.get_num_threads()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gb"] = round(int(line.split()[1]) / 2 ** 20, 1)
    for mod in ("mlflow", "ray"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    from pfl.tracking import git_commit

    info["git_commit"] = git_commit()
    return info


def _f(x: Any, nd: int = 2) -> str:
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python tests/bench.py{' --quick' if res.get('quick') else ''}`); the last "
        f"invocation ({', '.join(res.get('ran', [])) or 'all sections'}) ended {res['finished']} after "
        f"{res['wall_s'] / 60:.1f} min; each section's date is in the table at the end. Medians of "
        f"{res['repeats']} repeats unless stated. Regenerate with `make bench`; one section with "
        "`make bench ARGS='--only overhead'`.",
        "",
        f"**Machine**: {m.get('cpu', '?')}, {m['cores_usable']} usable cores ({m['cpu_count']} online), "
        f"{m.get('ram_gb', '?')} GB RAM; {m['platform']}; Python {m['python']}, torch {m['torch']}, "
        f"Lightning {m['lightning']}, MLflow {m.get('mlflow', '-')}, Ray {m.get('ray', 'not installed')}; "
        f"git {m['git_commit'][:10]}. Load average at start / end: {res['load_start']} / {res['load_end']} "
        "(other processes on the machine inflate every figure).",
        "",
    ]
    if res.get("quick"):
        lines += ["**Quick mode**: tiny synthetic data and settings. These numbers only show that the code "
                  "paths run; they say nothing about performance.", ""]
    s = res["sections"]
    lines += _md_summary(s)
    if "overhead" in s:
        lines += _md_overhead(s["overhead"]["result"])
    if "fast" in s:
        lines += _md_fast(s["fast"]["result"])
    if "agreement" in s:
        lines += _md_agreement(s["agreement"]["result"])
    if "strategies" in s:
        lines += _md_strategies(s["strategies"]["result"])
    if "scaling" in s:
        lines += _md_scaling(s["scaling"]["result"])
    if "fixed" in s:
        lines += _md_fixed(s["fixed"]["result"])
    if "data" in s:
        lines += _md_data(s["data"]["result"])
    if "memory" in s:
        lines += _md_memory(s["memory"]["result"], s.get("scaling", {}).get("result"))
    if "ray" in s:
        lines += _md_ray(s["ray"]["result"])
    if "threads" in s:
        lines += _md_threads(s["threads"]["result"])
    if res.get("skipped"):
        lines += [f"**Not run** (time budget spent): {', '.join(res['skipped'])}; earlier results, if any, are "
                  "kept above with their date below.", ""]
    lines += ["## Sections run", "", "| section | when | seconds |", "|---|---|---:|"]
    for name in SECTIONS:
        if name in s:
            lines.append(f"| {name} | {s[name]['when']} | {s[name]['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


#: the heading each section's block starts with, for splice_report
#: each section's heading in the report, and the summary rows it owns (by the row's first words)
SECTION_TITLES = {"overhead": "## 1. Framework overhead", "strategies": "## 2. Strategy cost", "scaling": "## 3. Scaling",
                  "fixed": "## Per-client fixed costs", "data": "## 4. Data", "memory": "## 5. Memory",
                  "ray": "## Ray backend", "threads": "## Threads and evaluation batch size", "fast": "## 7. Fast path",
                  "agreement": "## 8. Fast path agreement"}
SUMMARY_ROWS = {"overhead": ("framework overhead",), "strategies": ("ledger hashing", "seed_phase3"),
                "data": ("warm load",), "memory": ("peak RSS",), "ray": ("Ray backend",), "fast": ("trainer=fast per",),
                # the second: the row the fast section owned before agreement was its own section
                "agreement": ("fast path agreement", "trainer=fast final test metrics")}


def _blocks(md: str) -> list[str]:
    """The report split before each `## ` heading."""
    out: list[str] = []
    for line in md.splitlines(keepends=True):
        if line.startswith("## ") or not out:
            out.append("")
        out[-1] += line
    return out


def _merge_rows(old: str, new: str, owned: Callable[[str], bool]) -> str:
    """Table block `old` with its rows that `owned` picks replaced by those of `new`."""
    def rows(block: str) -> list[str]:
        return [ln for ln in block.splitlines(keepends=True)
                if ln.startswith("| ") and not ln.startswith(("| figure", "| section |"))]

    lines = old.splitlines(keepends=True)
    last = max((i for i, ln in enumerate(lines) if ln.startswith("|")), default=len(lines) - 1)
    olds = set(rows(old))
    kept = [ln for ln in lines[:last + 1] if not (ln in olds and owned(ln))]
    return "".join(kept + [r for r in rows(new) if owned(r)] + lines[last + 1:])


def splice_report(old: str, new: str, titles: Sequence[str], summary_rows: Sequence[str] = (),
                  sections: Sequence[str] = ()) -> str:
    """`old` with the blocks whose headings start with `titles` taken from `new` (replaced in
    place, or inserted before `## Sections run`), the header taken from `new`, and the rows of
    the summary (those starting with `summary_rows`) and of the sections-run table (`sections`)
    taken from `new`'s, the other rows kept."""
    fresh = {t: b for b in _blocks(new) for t in titles if b.startswith(t)}
    blocks, new_blocks = _blocks(old), _blocks(new)
    if blocks and new_blocks and not blocks[0].startswith("## ") and not new_blocks[0].startswith("## "):
        blocks[0] = new_blocks[0]
    for heading, owned in (("## Summary", lambda r: r[2:].startswith(tuple(summary_rows))),
                           ("## Sections run", lambda r: r[2:].split(" |")[0] in sections)):
        at = next((i for i, x in enumerate(blocks) if x.startswith(heading)), None)
        mine = next((b for b in new_blocks if b.startswith(heading)), None)
        if mine is None:
            continue
        if at is not None:
            blocks[at] = _merge_rows(blocks[at], mine, owned)
        else:  # a report written before the block existed: the summary after the header, runs last
            blocks.insert(1 if heading == "## Summary" and blocks and not blocks[0].startswith("## ")
                          else 0 if heading == "## Summary" else len(blocks), mine)
    for t, b in fresh.items():
        at = next((i for i, x in enumerate(blocks) if x.startswith(t)), None)
        if at is not None:
            blocks[at] = b
        else:
            end = next((i for i, x in enumerate(blocks) if x.startswith("## Sections run")), len(blocks))
            blocks.insert(end, b)
    return "".join(blocks)


def _md_summary(s: dict[str, Any]) -> list[str]:
    rows = []
    if "overhead" in s:
        for label, r in s["overhead"]["result"].items():
            if r.get("kind") == "patient":
                rows.append((f"framework overhead, {label} ({r['clients']} clients)", f"<= {PATIENT_ROUND_TARGET:.2f}x",
                             f"{r['ratio_round']:.3f}x", r["ratio_round"] <= PATIENT_ROUND_TARGET))
                continue
            for key, what in (("ratio_total", "whole run"), ("ratio_rounds", "rounds only")):
                rows.append((f"framework overhead, {label}, {what} ({r['rounds']} rounds)",
                             f"<= {OVERHEAD_TARGETS[key]:.2f}x", f"{r[key]:.3f}x", r[key] <= OVERHEAD_TARGETS[key]))
    if "fast" in s:
        o = s["fast"]["result"]
        for label, r in o["levers"].items():
            x = r["speedup_vs_plain"]["trainer=fast (all kept levers)"]
            rows.append((f"trainer=fast per FedAvg round, {label}", f">= {FAST_TARGET:.1f}x the plain loop",
                         f"{x:.2f}x", x >= FAST_TARGET))
        best = max(o["patient_speedup"], o["patient_speedup_test_last"])
        rows.append(("trainer=fast per-patient round (44 clients)", f">= {PATIENT_TARGET:.1f}x the exact path",
                     f"{o['patient_speedup']:.2f}x; {o['patient_speedup_test_last']:.2f}x with test at the last "
                     "round only", best >= PATIENT_TARGET))
    if "agreement" in s:
        o = s["agreement"]["result"]
        tol = ", ".join(f"{k.split('.')[2]} {100 * v:.1f}" for k, v in o["tolerance"].items())
        for label, r in o["settings"].items():
            worst = ", ".join(f"{k.split('.')[2]} {100 * max(x[k]['diff'] for x in r['rows']):.2f}"
                              for k in o["tolerance"])
            trivial = _trivial_seeds(r)
            note = f" (both only-N on {len(trivial)} of {len(r['rows'])} seeds)" if trivial else ""
            control = _worst_control(r, o["tolerance"])
            note += f"; fp32 control: worst {control}" if control else ""
            rows.append((f"fast path agreement with exact, {label.split(' (')[0]}, {len(r['rows'])} seeds",
                         f"abs diff <= {tol} points", f"worst {worst} points{note}",
                         "**not shown** (every seed trivial)" if len(trivial) == len(r["rows"]) else r["holds"]))
    if "strategies" in s:
        o = s["strategies"]["result"]
        worst = max(r["ledger_share"] for r in o["runs"].values())
        rows.append(("ledger hashing, share of a round", "< 2%", f"{100 * worst:.3f}% (worst strategy)", worst < 0.02))
        per = o["seed_phase3_extrapolated_s"] / 60 / max(len(o.get("study_strategies", [])), 1)
        lo, hi = REFERENCE_MIN_PER_STRATEGY
        rows.append(("seed_phase3 per strategy (extrapolated)", f"reference {lo:.0f}-{hi:.0f} min",
                     f"{per:.1f} min", per <= hi))
    if "data" in s:
        w = s["data"]["result"]["warm_median_s"]
        rows.append(("warm load of all beats", "well under 2 s", f"{w:.3f} s", w < 2))
    if "memory" in s:
        m = s["memory"]["result"]["peak_rss_mb"]
        rows.append(("peak RSS, patient_specific", "< 2048 MB", f"{m:.0f} MB", m < 2048))
    if "ray" in s and "cases" in s["ray"]["result"]:
        for label, c in s["ray"]["result"]["cases"].items():
            rows.append((f"Ray backend, {label}", "speed-up measured; metrics equal serial's",
                         f"{c['speedup_vs_serial_default']:.2f}x vs serial (default threads), "
                         f"{c['speedup_vs_serial_1thread']:.2f}x vs serial (1 thread); identical metrics: "
                         f"{'yes' if c['identical_to_serial_1thread'] else 'NO'}", c["identical_to_serial_1thread"]))
    if not rows:
        return []
    out = ["## Summary", "", "| figure | target | measured | met |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {ok if isinstance(ok, str) else 'yes' if ok else '**no**'} |" for a, b, c, ok in rows]
    return out + [""]


def _met(ratio: float, target: float) -> str:
    return f"{ratio:.3f}x (target ≤ {target:.2f}x: {'met' if ratio <= target else 'NOT met'})"


def _md_overhead(o: dict[str, Any]) -> list[str]:
    runs = {k: r for k, r in o.items() if r.get("kind", "hospitals") == "hospitals"}
    out = ["## 1. Framework overhead: pfl vs a plain PyTorch loop", "",
           "Same process, same data, model, seeds, batches (`BatchLoader`), optimizer, epochs, FedAvg and "
           "evaluation; runs interleaved. pfl = `pfl.run.train` with its defaults: Lightning Fabric client "
           "training, server loop, batched evaluation, MLflow (SQLite store in a temp dir; per-round metrics from "
           "a background thread), ledger and checkpoints (written and fsynced in a background queue), run "
           "artifacts (figures drawn in a child process while the model is logged; the model's torch.export "
           "program loaded from the export cache, which the untimed warm-up run filled); progress display off. "
           f"Targets (issue 14): whole run ≤ {OVERHEAD_TARGETS['ratio_total']:.2f}x, rounds only ≤ "
           f"{OVERHEAD_TARGETS['ratio_rounds']:.2f}x, the per-patient round ≤ {PATIENT_ROUND_TARGET:.2f}x.", "",
           "| model | rounds | pfl total s | plain total s | whole run | ratio of fastest runs | pfl rounds s "
           "| plain rounds s | rounds only | pfl setup / end s | plain setup s | same weights and metrics |",
           "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for label, r in runs.items():
        out.append(f"| {label} | {r['rounds']} | {r['pfl_total_median_s']:.2f} | {r['plain_total_median_s']:.2f} | "
                   f"**{_met(r['ratio_total'], OVERHEAD_TARGETS['ratio_total'])}** | "
                   f"{r.get('ratio_total_min', float('nan')):.3f}x | "
                   f"{r['pfl_rounds_median_s']:.2f} | {r['plain_rounds_median_s']:.2f} | "
                   f"**{_met(r['ratio_rounds'], OVERHEAD_TARGETS['ratio_rounds'])}** | "
                   f"{r['pfl_setup_median_s']:.2f} / {r['pfl_finalize_median_s']:.2f} | "
                   f"{r['plain_setup_median_s']:.2f} | {'yes' if r['identical'] else 'NO'} |")
    out.append("")
    for label, r in runs.items():
        cb = r["callbacks_median_s"]
        per_round_cb = sum(v for k, v in cb.items() if k.endswith(("on_round_end", "on_client_end")))
        diff = r["pfl_total_median_s"] - r["plain_total_median_s"]
        out.append(f"- {label}, where pfl's extra {diff:+.2f}s goes (medians, so the parts need not add up "
                   f"exactly): setup {r['pfl_setup_median_s'] - r['plain_setup_median_s']:+.2f}s, local training "
                   f"(Lightning) {r['pfl_train_median_s'] - r['plain_train_median_s']:+.2f}s, aggregation + "
                   f"evaluation {r['pfl_eval_median_s'] - r['plain_eval_median_s']:+.2f}s, per-round callbacks "
                   f"(MLflow metrics, ledger, checkpoint) {per_round_cb:+.2f}s, end of run (tables, figures, the "
                   f"MLflow model, upload) {r['pfl_finalize_median_s']:+.2f}s.")
    for label, r in runs.items():
        out.append(f"- {label}: " + _md_pairs_and_length(r))
    target = OVERHEAD_TARGETS["ratio_total"]
    variants = {
        "pickle": ("with the model logged as pickle (`logger.model_format=pickle`, no torch.export at run end)",
                   True),
        "traced": ("tracing the model afresh (`logger.export_cache=false`, as the first run of an architecture "
                   "does; the timed runs above load the program the warm-up run stored)", False),
    }
    for name, (what, against_target) in variants.items():
        for label, r in runs.items():
            if f"ratio_total_{name}" not in r:
                continue
            ratio = r[f"ratio_total_{name}"]
            verdict = (f" (target ≤ {target:.2f}x: {'met' if ratio <= target else 'NOT met'})"
                       if against_target else "")
            out.append(f"- {label}, the same runs {what}: whole run {median(r[f'pfl_{name}_total_s']):.2f}s, "
                       f"{ratio:.3f}x the plain loop{verdict}.")
    for label, r in runs.items():
        cb = r["callbacks_median_s"]
        top = sorted(cb.items(), key=lambda kv: -kv[1])[:4]
        out.append(f"- {label}: local training {r['pfl_train_median_s']:.2f}s vs {r['plain_train_median_s']:.2f}s, "
                   f"aggregation + evaluation {r['pfl_eval_median_s']:.2f}s vs {r['plain_eval_median_s']:.2f}s; "
                   "callbacks: " + ", ".join(f"{k} {v:.3f}s" for k, v in top)
                   + f". Settings: `{' '.join(x for x in r['overrides'] if not x.startswith(('data.', 'paths.')))}`.")
    pr = o.get("per-patient round")
    if pr:
        out += ["", f"Per-patient federation, one FedAvg round ({pr['clients']} clients; "
                f"`{' '.join(x for x in pr['overrides'] if not x.startswith(('data.', 'paths.')))}`); the round "
                f"evaluates {pr['beats_evaluated']:,} val and test beats:", "",
                "| | round s | local training s | evaluation and callbacks s |", "|---|---:|---:|---:|",
                f"| pfl | {pr['pfl_round_s']:.1f} | {pr['pfl_train_s']:.1f} | {pr['pfl_eval_s']:.1f} |",
                f"| plain loop | {pr['plain_round_s']:.1f} | {pr['plain_train_s']:.1f} | {pr['plain_eval_s']:.1f} |",
                "", f"- round: **{_met(pr['ratio_round'], PATIENT_ROUND_TARGET)}**; same weights: "
                f"{'yes' if pr['identical'] else 'NO'}. pfl evaluates the global model in one batched pass over "
                "every client's beats (its cost grows with beats, not clients); the plain loop client by client."]
    out.append("")
    return out


def _costs(r: dict[str, Any], side: str) -> tuple[float, float]:
    """One side's (pfl or plain) fixed cost a run (its total less its rounds) and its median
    round, from the measured medians."""
    return (r[f"{side}_total_median_s"] - r[f"{side}_rounds_median_s"],
            r[f"{side}_rounds_median_s"] / r["rounds"])


def overhead_at_length(r: dict[str, Any], rounds: float) -> float:
    """The whole-run ratio a run of `rounds` rounds would have."""
    (fp, rp), (fq, rq) = _costs(r, "pfl"), _costs(r, "plain")
    return (fp + rounds * rp) / (fq + rounds * rq)


def length_within(r: dict[str, Any], target: float) -> int | None:
    """The fewest rounds at which `overhead_at_length` is within `target` (closed form of
    fixed_pfl + k round_pfl <= target (fixed_plain + k round_plain)); None if no length is."""
    (fp, rp), (fq, rq) = _costs(r, "pfl"), _costs(r, "plain")
    if fp <= target * fq and rp <= target * rq:
        return 1
    if rp >= target * rq:
        return None
    return max(1, math.ceil((fp - target * fq) / (target * rq - rp)))


def _md_pairs_and_length(r: dict[str, Any]) -> str:
    """The spread of the per-repeat ratios, and the run length at which the whole-run target
    would hold, given the fixed costs and the per-round ratio measured here."""
    parts = []
    pairs = [p / q for p, q in zip(r["pfl_total_s"], r["plain_total_s"], strict=True)]
    parts.append(f"whole-run ratio per interleaved repeat {min(pairs):.3f}-{max(pairs):.3f}x")
    repeats = None
    if "pfl_rounds_s" in r:
        repeats = [p / q for p, q in zip(r["pfl_rounds_s"], r["plain_rounds_s"], strict=True)]
        parts.append(f"rounds-only {min(repeats):.3f}-{max(repeats):.3f}x")
    target = OVERHEAD_TARGETS["ratio_total"]
    (fp, _), (fq, rq) = _costs(r, "pfl"), _costs(r, "plain")
    text = "; ".join(parts) + (f". pfl's fixed cost over the plain loop's (setup and end of run) is {fp - fq:+.2f}s "
                               f"a run, against {rq:.2f}s for a plain round")
    length = length_within(r, target)
    if length is None:
        text += (f": the median per-round ratio alone ({r['ratio_rounds']:.3f}x) is not below {target:.2f}x, so "
                 "no run length brings the whole run within it")
    else:
        text += (f": at the median per-round costs a run of {length} rounds or more would be within {target:.2f}x "
                 f"(at 20 rounds {overhead_at_length(r, 20):.3f}x)")
    if repeats is not None and min(repeats) < target <= max(repeats):
        text += (f"; the repeats' rounds-only ratios straddle {target:.2f}x, so that length is not established "
                 "on this machine")
    return text + "."


def _md_strategies(o: dict[str, Any]) -> list[str]:
    runs = o["runs"]
    out = ["## 2. Strategy cost and 6. end to end (seed_phase3 settings)", "",
           f"Settings: `{' '.join(o['settings'])}` (hospitals, CNN-LSTM, 5 local epochs, batch 32), "
           f"{o['rounds']} rounds per strategy, each in a fresh process with MLflow logging; median round.", "",
           "| strategy | s / round | vs none | train s | eval + personalize s | callbacks s | ledger share "
           "| fixed s (start-up, setup, artifacts) | 20-round run, extrapolated |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        out.append(f"| {name} | {r['round_median_s']:.2f} | {r['ratio_vs_none']:.2f}x | {per_round(r, 'train_s'):.2f} | "
                   f"{per_round(r, 'eval_s'):.2f} | {per_round(r, 'callbacks_s'):.3f} | {100 * r['ledger_share']:.3f}% | "
                   f"{r['fixed_s']:.1f} | {r['study_extrapolated_s'] / 60:.1f} min |")
    tot = o["seed_phase3_extrapolated_s"]
    lo, hi = REFERENCE_MIN_PER_STRATEGY
    out += ["", f"**End to end**: `experiment=seed_phase3` (none, finetune, perfedavg FO; 20 rounds x 5 local "
            f"epochs) is **extrapolated**, not run: per strategy, the measured fixed cost plus 20 x its median "
            f"round = {tot / 60:.1f} min for the three ({tot / 180:.1f} min per strategy on average) against the "
            f"reference study's {lo:.0f} to {hi:.0f} min per strategy ({3 * lo:.0f} to {3 * hi:.0f} min). The "
            "full study does not fit the 20-minute budget of `make bench`; run it with "
            "`pfl experiment=seed_phase3` to time it directly.",
            "", "**Ledger**: hashing every round (weights before and after, each client's update, fsync) takes "
            "the share of the round shown above; target < 2%.", ""]
    return out


def _md_scaling(o: dict[str, Any]) -> list[str]:
    out = ["## 3. Scaling", "", f"Settings: `{' '.join(o['settings'])}`, each point a fresh process (its own "
           "peak RSS), MLflow on except for the train_minutes rows. Model `cnn` keeps the compute small so that "
           "per-client costs show. End-of-run artifacts: MlflowTracker.on_run_end (per-client confusion-matrix "
           "PNGs, learning curves, tables, model), once per run.", "",
           "| clients | partition | training beats | s / round | train s | eval s | callbacks s | ms / client "
           "| µs / training beat | peak RSS MB | end-of-run artifacts s |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("clients", "patient"), ("beats", "patient, train_minutes={}"), ("dirichlet", "dirichlet")):
        for k, r in o[key].items():
            part = label.format(k) if "{}" in label else label
            out.append(f"| {r['clients']} | {part} | {r['train_beats']} | {r['round_s']:.2f} | {r['train_s']:.2f} | "
                       f"{r['eval_s']:.2f} | {r['callbacks_s']:.3f} | {1000 * r['round_s'] / r['clients']:.1f} | "
                       f"{1e6 * r['train_s'] / max(r['train_beats'], 1):.0f} | {r['peak_rss_mb']:.0f} | "
                       f"{r.get('run_end_s', float('nan')):.1f} |")
    fit = _linear_fit([(r["clients"], r["round_s"]) for r in o["clients"].values()])
    if fit:
        out += ["", f"Round time vs clients (per-patient): {fit[0]:.2f}s + {1000 * fit[1]:.1f} ms x clients "
                f"(least squares over {len(o['clients'])} points)."]
    fitb = _linear_fit([(r["train_beats"], r["train_s"]) for r in o["beats"].values()])
    if fitb:
        out += [f"Training time vs training beats (44 clients): {fitb[0]:.2f}s + {1e6 * fitb[1]:.0f} µs x beats."]
    out.append("")
    return out


def _linear_fit(pts: list[tuple[float, float]]) -> tuple[float, float] | None:
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return my - b * mx, b


def _md_fixed(o: dict[str, Any]) -> list[str]:
    lf, ll = o["loader_first_batch_ms"], o["loader_epoch_ms"]
    return ["## Per-client fixed costs", "",
            "| cost | measured | what it is against |", "|---|---:|---|",
            f"| Lightning Trainer construction | {o['trainer_construction_ms']:.2f} ms | once per local fit |",
            f"| a Lightning fit's fixed overhead (1-step fit minus a plain step) | {o['fit_fixed_ms']:.2f} ms | "
            "once per local fit and per personalization fit |",
            f"| Lightning per-step overhead (hooks, closures) | {o['per_step_overhead_ms']:.3f} ms | per optimizer "
            "step; see the threads table for the step itself |",
            f"| BatchLoader first batch / one epoch ({ll['batches']} batches) | {lf['BatchLoader']:.3f} ms / "
            f"{ll['BatchLoader']:.1f} ms | torch DataLoader(TensorDataset): {lf['DataLoader']:.3f} ms / "
            f"{ll['DataLoader']:.1f} ms |",
            f"| evaluating one client split, fixed part | {o['eval_fixed_ms']:.2f} ms | per client, split and model |",
            f"| MLflow log_batch, 10 / 100 / 500 metrics | {o['mlflow_log_10_metrics_ms']:.1f} / "
            f"{o['mlflow_log_100_metrics_ms']:.1f} / {o['mlflow_log_500_metrics_ms']:.1f} ms | per round; "
            f"{o['mlflow_per_metric_ms']:.3f} ms per metric, 8 per client (split x model x acc/f1) |",
            f"| a new SQLite MLflow store (schema creation) | {o['mlflow_new_store_s']:.2f} s | once per store |",
            f"| ledger: SHA-256 of the CNN-LSTM weights ({o['weights_mb']:.2f} MB) | {o['weights_digest_ms']:.2f} ms "
            "| 2 + clients digests per round |", ""]


def _md_data(o: dict[str, Any]) -> list[str]:
    return ["## 4. Data", "",
            "| step | median s | runs | note |", "|---|---:|---|---|",
            f"| cold build of the beat cache ({o['records']} records, {o['beats']} beats, {o['cache_mb']:.0f} MB) | "
            f"{o['cold_median_s']:.2f} | {', '.join(f'{x:.2f}' for x in o['cold_s'])} | read WFDB, filter, "
            "segment, write .npz (source files in the OS page cache after the first run) |",
            f"| warm load (all records from the cache) | **{o['warm_median_s']:.3f}** | "
            f"{', '.join(f'{x:.3f}' for x in o['warm_s'])} | target well under 2 s |",
            f"| build partition `{o['partition']}` | {o['partition_build_s']:.3f} | 1 | |",
            f"| partition digest (checkpoint / ledger identity) | {o['partition_digest_s']:.3f} | 1 | |", ""]


def _md_memory(o: dict[str, Any], scaling: dict[str, Any] | None) -> list[str]:
    out = ["## 5. Memory", "",
           f"`{' '.join(x for x in o['overrides'] if not x.startswith(('data.', 'paths.')))}` "
           f"({o['clients']} clients) in a fresh process: **peak RSS {o['peak_rss_mb']:.0f} MB** (target < 2048 MB); "
           f"RSS after each round: {', '.join(f'{x:.0f}' for x in o['rss_per_round_mb'])} MB; "
           f"{o['round_s']:.1f}s per round (train {o['train_s']:.1f}s, evaluation + personalization "
           f"{o['eval_s']:.1f}s) with 1 local epoch instead of 5."]
    if scaling:
        pts = [(r["clients"], r["peak_rss_mb"]) for k in ("clients", "dirichlet") for r in scaling[k].values()]
        out.append("Peak RSS against clients (scaling runs, small model): "
                   + ", ".join(f"{c} clients {m:.0f} MB" for c, m in sorted(pts)) + ".")
    out.append("")
    return out


def _md_ray(o: dict[str, Any]) -> list[str]:
    if "skipped" in o:
        return ["## Ray backend", "", f"Skipped: {o['skipped']}.", ""]
    out = ["## Ray backend (`federation.backend=ray`)", "",
           f"Ray {o['ray_version']} on this machine ({o['cores']} cores): one actor per core with 1 torch thread "
           "each, against the serial backend. Round 1 with Ray includes starting Ray and the actors; the steady "
           "figure is the median of the later rounds. MLflow off.", "",
           "| case | variant | round 1 s | steady s / round | train s | eval s |", "|---|---|---:|---:|---:|---:|"]
    for label, c in o["cases"].items():
        for name, v in c["variants"].items():
            out.append(f"| {label} | {name} | {v['round1_s']:.2f} | {v['round_steady_s']:.2f} | "
                       f"{v['train_steady_s']:.2f} | {v['eval_steady_s']:.2f} |")
    out.append("")
    for label, c in o["cases"].items():
        out.append(f"- {label}: speed-up per round {c['speedup_vs_serial_default']:.2f}x vs serial with default "
                   f"threads ({c['train_speedup_vs_serial_default']:.2f}x on local training alone), "
                   f"{c['speedup_vs_serial_1thread']:.2f}x vs serial with 1 thread; Ray start-up about "
                   f"{c['startup_s']:.1f}s once per run; metrics identical to serial with 1 thread: "
                   f"{'yes' if c['identical_to_serial_1thread'] else 'NO'}.")
    out.append("")
    return out


def _md_threads(o: dict[str, Any]) -> list[str]:
    out = ["## Threads and evaluation batch size", "",
           "One optimizer step (batch 32, median, each in a fresh interpreter) and inference per beat, plain "
           "PyTorch. `spin`: OpenMP's default, idle threads spin before they sleep (what pfl runs with); "
           "`PASSIVE`: `OMP_WAIT_POLICY=PASSIVE`, they sleep at once. Inference per beat with the default.", "",
           "| model @ threads | step ms | inference µs / beat at batch 256 / 1024 / 4096 |", "|---|---:|---|"]
    for key, ms in o["step_ms"].items():
        base = key.split(" ")[0]
        inf = [o["infer_us_per_beat"].get(f"{base}/bs{bs}") for bs in (256, 1024, 4096)] if "PASSIVE" not in key else []
        out.append(f"| {key} | {ms:.2f} | " + " / ".join("-" if v is None else f"{v:.0f}" for v in inf) + " |")
    pair = o.get("pair_step_ms")
    if pair:
        out += ["", "Two runs at once (two jobs of a parallel sweep), mean step ms of the two: "
                + ", ".join(f"{k} threads each {v:.1f}" for k, v in pair.items()) + "."]
    out.append("")
    return out


# --------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> tuple[Opts, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python tests/bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny synthetic settings: a smoke test of every code path")
    p.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3; quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds per timed run (default 2; quick 1)")
    p.add_argument("--threads", type=int, default=None, help="trainer.threads for pfl runs (default: config's)")
    p.add_argument("--data-dir", type=Path, default=None, help="MIT-BIH directory (default: $PFL_DATA_DIR, "
                   "../shared/data/mitdb); --quick: a synthetic database is written when omitted")
    p.add_argument("--cache-dir", type=Path, default=None, help="beat cache for the timed runs")
    p.add_argument("--report", type=Path, default=None, help="Markdown report (default BENCHMARKS.md)")
    p.add_argument("--results", type=Path, default=None, help="JSON results (default outputs/bench/results.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory")
    p.add_argument("--max-minutes", type=float, default=None, help="start no further section after this "
                   "many minutes (default 19: `make bench` must end within 20 on 2 cores); 0 = no limit")
    p.add_argument("--agreement", default="", help="agreement section: comma-separated settings to measure "
                   "(reference, reference_full, clinical; default all); the others keep their earlier results")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument("--strategy", action="append", default=[], metavar="NAME[:OVERRIDES]",
                   help="time another strategy in the strategies section: a conf/strategy name, or a name and "
                        "its overrides, e.g. 'prox_heads:strategy._target_=my_strategies.ProxHeads "
                        "strategy.name=prox_heads' (repeatable)")
    p.add_argument("--gpu", action="store_true", help="time experiment=seed_phase3 with trainer=gpu and print "
                   "rounds per second (skips, with the reason, where torch sees no CUDA GPU)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sel = [s for s in (a.only.split(",") if a.only else SECTIONS) if s]
    bad = [s for s in sel + [s for s in a.skip.split(",") if s] if s not in SECTIONS]
    if bad:
        p.error(f"unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    skip = set(a.skip.split(","))
    # --quick pins 1 thread: on a shared machine, idle OpenMP threads spinning against other
    # processes make multi-threaded tiny runs many times slower (see the threads section).
    threads = a.threads if a.threads is not None else (1 if a.quick else None)
    o = Opts(quick=a.quick, sections=tuple(s for s in SECTIONS if s in sel and s not in skip), threads=threads)
    o.repeats = a.repeats if a.repeats is not None else (1 if a.quick else 3)
    o.rounds = a.rounds if a.rounds is not None else (1 if a.quick else 2)
    o.max_minutes = (19.0 if not a.quick else 0.0) if a.max_minutes is None else a.max_minutes
    if o.repeats < 1 or o.rounds < 1:
        p.error("--repeats and --rounds must be >= 1")
    o.agreement = tuple(x for x in a.agreement.split(",") if x)
    known = tuple(agreement_settings(Opts()))
    if bad := [x for x in o.agreement if x not in known]:
        p.error(f"unknown agreement setting {bad[0]!r}; choose from {', '.join(known)}")
    if a.quick:
        o.report = REPO / "outputs" / "bench" / "BENCHMARKS.quick.md"
        o.results = REPO / "outputs" / "bench" / "results.quick.json"
        o.work = REPO / "outputs" / "bench" / "work-quick"
    o.report, o.results, o.work = a.report or o.report, a.results or o.results, a.work or o.work
    o.work = o.work.resolve()
    o.cache_dir = (a.cache_dir or (o.work / "cache" if a.quick else o.cache_dir)).resolve()
    for spec in a.strategy:
        name, _, extra = spec.partition(":")
        if not name.strip():
            p.error(f"--strategy {spec!r}: expected NAME or NAME:OVERRIDES")
        o.strategies[name.strip()] = extra.split() if extra.strip() else [f"strategy={name.strip()}"]
    o.data_dir = a.data_dir.resolve() if a.data_dir else None
    return o, a


def main(argv: Sequence[str] | None = None) -> int:
    opts, a = parse(argv)
    if a.worker is not None:
        import logging

        logging.basicConfig(level=logging.WARNING)
        out = _worker(json.loads(a.worker))
        print(MARK + json.dumps(out, default=float), flush=True)
        return 0
    if a.gpu:
        return bench_gpu(opts)
    if a.list:
        for name in SECTIONS:
            doc = (RUNNERS[name].__doc__ or "").strip().splitlines()[0]
            print(f"{name:11s} {doc}")
        return 0
    opts.work.mkdir(parents=True, exist_ok=True)
    if opts.data_dir is None:
        opts.data_dir = _synthetic_db(opts.work / "synthdb") if opts.quick else _default_data_dir()
    if opts.data_dir is None:
        print("error: no MIT-BIH data: set PFL_DATA_DIR or pass --data-dir (or use --quick for synthetic data)",
              file=sys.stderr)
        return 2
    import pfl  # noqa: F401  (config resolvers)

    previous: dict[str, Any] = {}
    if opts.results.is_file() and set(opts.sections) != set(SECTIONS):
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(opts.results.read_text())
    mach = machine()
    if previous.get("machine", {}).get("cpu") != mach.get("cpu") or previous.get("quick") != opts.quick:
        previous = {}
    res = {"machine": mach, "quick": opts.quick, "repeats": opts.repeats, "rounds": opts.rounds,
           "data_dir": str(opts.data_dir), "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
           "sections": dict(previous.get("sections", {}))}
    log(f"sections: {', '.join(opts.sections)}; data {opts.data_dir}; load {res['load_start']}")
    t_all = time.perf_counter()
    res["skipped"] = []
    for name in opts.sections:
        spent = (time.perf_counter() - t_all) / 60
        if opts.max_minutes and spent > opts.max_minutes:
            # A partial report beats none; the sections left out say so in it.
            log(f"--- {name}: skipped, {spent:.1f} min spent of --max-minutes {opts.max_minutes:g}")
            res["skipped"].append(name)
            continue
        log(f"--- {name}")
        t = time.perf_counter()
        result = RUNNERS[name](opts)
        if name == "agreement":
            result = merge_agreement(res["sections"].get(name, {}).get("result"), result)
        res["sections"][name] = {"result": result, "seconds": time.perf_counter() - t,
                                 "when": time.strftime("%Y-%m-%d %H:%M")}
    res["wall_s"] = time.perf_counter() - t_all
    res["ran"] = [n for n in opts.sections if n not in res["skipped"]]
    res["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    opts.results.parent.mkdir(parents=True, exist_ok=True)
    opts.results.write_text(json.dumps(res, indent=1, default=float))
    opts.report.parent.mkdir(parents=True, exist_ok=True)
    text = render(res)
    if opts.report.is_file() and set(res["sections"]) < set(SECTIONS):
        # The JSON lacks some sections (a fresh clone; another machine's or a quick run's
        # results set aside; a results file removed): keep the report's blocks of those and
        # replace the blocks of the sections the JSON holds.
        known = [n for n in SECTIONS if n in res["sections"]]
        text = splice_report(opts.report.read_text(), text, [SECTION_TITLES[n] for n in known if n in SECTION_TITLES],
                             [p for n in known for p in SUMMARY_ROWS.get(n, ())], known)
    opts.report.write_text(text)
    log(f"done in {res['wall_s'] / 60:.1f} min: {opts.report} and {opts.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
