"""`pfl-study`: run a named results grid, resumably, then write its RESULTS.md.

A grid (`conf/grid/<name>.yaml`) is federations x strategies x seeds on top of common
overrides. It runs in two stages, each a list of cells (one `pfl` run each):

1. tuning: every strategy with a search space (`search:` in its YAML) gets the same budget of
   trials on one federation and seed: trial 0 is the YAML's defaults, the others are drawn
   from the space with a generator seeded by the strategy's name. The trial with the best
   validation objective wins; the choice is written to the grid's tuning file, which is
   committed, and a strategy already in that file is not tuned again while the config hash its
   entry records (of its defaults trial) is still today's;
2. the grid: every federation x strategy x seed with the tuned hyperparameters.

A cell whose config hash already has a FINISHED run in the stage's MLflow experiment is
skipped; any other cell runs with `resume=true`, so an interrupted run continues from its last
checkpoint (and its MLflow run). Stop the command at any time and start it again to go on;
`--dry-run` shows what is done and what is left. Cells run as `pfl` subprocesses, `jobs` at a
time (one torch thread each by the grid's overrides), their output in `<out>/logs/`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pfl.errors import ConfigError, PflError
from pfl.fl.batches import derive_seed

CONF_DIR = Path(os.environ.get("PFL_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))
GRID_KEYS = {"name", "study", "seeds", "jobs", "overrides", "federations", "strategies", "tune", "out",
             "description"}


@dataclass
class Cell:
    stage: str  # tune | grid
    federation: str
    strategy: str
    seed: int
    overrides: list[str]
    trial: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""

    @property
    def key(self) -> str:
        if self.stage == "tune":
            return f"tune/{self.strategy}/trial{self.trial}"
        return f"{self.federation}/{self.strategy}/seed{self.seed}"


@dataclass
class Grid:
    name: str
    study: str
    seeds: list[int]
    jobs: int
    overrides: list[str]
    federations: dict[str, list[str]]
    strategies: dict[str, list[str]]
    tune: dict[str, Any]
    out: Path
    description: str = ""
    #: the command line's overrides: last in every cell, so they win over tuned values too
    extra: list[str] = field(default_factory=list)

    @property
    def tuning_file(self) -> Path:
        return Path(str(self.tune.get("file") or self.out / "tuning.yaml"))


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(where, value, "a list of Hydra overrides key=value")
    return list(value)


def load_grid(name: str, extra: list[str] | None = None) -> Grid:
    path = Path(name) if name.endswith(".yaml") else CONF_DIR / "grid" / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (CONF_DIR / "grid").glob("*.yaml"))
        raise ConfigError("grid", name, "a grid of conf/grid/: " + ", ".join(have) + " (or a path to a grid YAML)")
    d = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(d) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"grid key {unknown[0]!r} in {path}", d[unknown[0]], "one of " + ", ".join(sorted(GRID_KEYS)))
    seeds = d.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError("grid seeds", seeds, "a non-empty list of integers >= 0")
    jobs = d.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError("grid jobs", jobs, "an integer >= 1")
    feds = {str(k): _overrides(v, f"grid federations.{k}") for k, v in (d.get("federations") or {}).items()}
    strategies_raw = d.get("strategies") or []
    if isinstance(strategies_raw, list):
        strategies = {str(s): [f"strategy={s}"] for s in strategies_raw}
    else:
        strategies = {str(k): _overrides(v, f"grid strategies.{k}") or [f"strategy={k}"]
                      for k, v in strategies_raw.items()}
    if not feds or not strategies:
        raise ConfigError(f"grid {path.name}", {"federations": list(feds), "strategies": list(strategies)},
                          "at least one federation and one strategy")
    known = {p.stem for p in (CONF_DIR / "strategy").glob("*.yaml")}
    for s, ov in strategies.items():
        for o in ov:
            if o.startswith("strategy=") and o.split("=", 1)[1] not in known:
                raise ConfigError(f"grid strategies.{s}", o.split("=", 1)[1], "a strategy of conf/strategy/: "
                                  + ", ".join(sorted(known)))
    tune = dict(d.get("tune") or {})
    budget = tune.get("budget", 0)
    if not isinstance(budget, int) or budget < 0:
        raise ConfigError("grid tune.budget", budget, "an integer >= 0 (trials per strategy; 0: no tuning)")
    if budget and tune.get("federation", next(iter(feds))) not in feds:
        raise ConfigError("grid tune.federation", tune.get("federation"), "one of the grid's federations: "
                          + ", ".join(feds))
    objective = str(tune.get("objective", "val.personal.f1.mean"))
    from pfl.config import OBJECTIVE_PREFIXES

    if not objective.startswith(OBJECTIVE_PREFIXES):
        raise ConfigError("grid tune.objective", objective, "a val.* or heldout.val.* metric (never test)")
    tune.update(budget=budget, objective=objective, federation=tune.get("federation", next(iter(feds))),
                seed=int(tune.get("seed", seeds[0])))
    root = Path(os.environ.get("PFL_ROOT_DIR", "."))
    name = str(d.get("name", path.stem))
    out = Path(str(d.get("out") or root / "outputs" / "results" / name))
    extra = list(extra or [])
    if extra:
        # Other overrides, other runs: their own tuning file and RESULTS.md beside the grid's.
        import hashlib

        digest = hashlib.sha256(" ".join(extra).encode()).hexdigest()[:8]
        out = out.parent / f"{out.name}-{digest}"
        tune["file"] = None
    return Grid(name=name, study=str(d.get("study", path.stem)), seeds=list(seeds),
                jobs=jobs, overrides=_overrides(d.get("overrides"), "grid overrides"),
                federations=feds, strategies=strategies, tune=tune, out=out,
                description=str(d.get("description", "")).strip(), extra=extra)


# --------------------------------------------------------------------------- search spaces

_SPACE = re.compile(r"^\s*(?:tag\(\s*(log)\s*,\s*)?(interval|range)\(\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*\)\s*\)?\s*$")


_CHOICE = re.compile(r"^\s*choice\((.*)\)\s*$")
SPACES = "interval(a, b), tag(log, interval(a, b)), range(a, b) or choice(a, b, ...)"


def parse_space(expr: str) -> tuple[str, Any, Any, bool]:
    """`tag(log, interval(a, b))`, `interval(a, b)`, `range(a, b)` -> (kind, low, high, log);
    `choice(a, b, ...)` (Hydra's categorical) -> ("choice", [a, b, ...], None, False)."""
    c = _CHOICE.match(str(expr))
    if c:
        values = [yaml.safe_load(v.strip()) for v in c.group(1).split(",") if v.strip()]
        if values:
            return "choice", values, None, False
    m = _SPACE.match(str(expr))
    if not m:
        raise ConfigError("strategy.search", expr, SPACES)
    log, kind, lo, hi = m.groups()
    return kind, float(lo), float(hi), bool(log)


def sample_trials(space: dict[str, str], budget: int, name: str) -> list[dict[str, Any]]:
    """Trial 0: the YAML defaults ({}); then budget - 1 points drawn from the space."""
    if budget <= 0:
        return []
    rng = np.random.default_rng(derive_seed("tune", name))
    trials: list[dict[str, Any]] = [{}]
    for _ in range(budget - 1):
        point: dict[str, Any] = {}
        for key, expr in space.items():
            kind, lo, hi, log = parse_space(expr)
            if kind == "choice":
                point[key] = lo[int(rng.integers(len(lo)))]
            elif kind == "range":  # Hydra's range: integers lo, lo+1, ..., hi-1
                point[key] = int(rng.integers(int(lo), int(hi)))
            elif log:
                point[key] = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
            else:
                point[key] = float(f"{rng.uniform(lo, hi):.4g}")
        trials.append(point)
    return trials


def compose(overrides: list[str]):
    """The config a `pfl` run with these overrides composes (inside `main`, one Hydra session
    serves every cell; outside it, each call opens its own)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import pfl  # noqa: F401  (resolvers)
    from pfl.shortforms import expand

    args = expand(list(overrides), str(CONF_DIR))
    if GlobalHydra.instance().is_initialized():
        return hydra_compose("config", overrides=args)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=args)


#: override list -> config hash, remembered per conf/ content in <out>/.config_hashes.json:
#: composing takes Hydra about half a second a cell, the same for every sitting
_HASHES: dict[str, str] = {}


def _conf_digest() -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(CONF_DIR.rglob("*.yaml")):
        h.update(str(f.relative_to(CONF_DIR)).encode() + b"\0" + f.read_bytes())
    # The code that turns overrides into a hash: a change there must not leave stale hashes.
    here = Path(__file__).resolve().parent
    for name in ("config.py", "resolvers.py", "shortforms.py", "data/rr.py"):
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    # ${cores:} (trainer=fast's worker count) enters the hash with trainer.spread_threads
    from pfl.resolvers import _cores

    h.update(f"cores={_cores()}".encode())
    return h.hexdigest()


def _config_hash(overrides: list[str]) -> str:
    import hashlib

    from pfl import config as cfgmod

    key = hashlib.sha256("\0".join([_HASHES.get("__conf__", ""), *overrides]).encode()).hexdigest()
    if key not in _HASHES:
        _HASHES[key] = cfgmod.config_hash(compose(overrides))
    return _HASHES[key]


def _load_hashes(grid: Grid) -> None:
    import json

    _HASHES.clear()
    f = grid.out / ".config_hashes.json"
    digest = _conf_digest()
    try:
        saved = json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        saved = {}
    if saved.get("__conf__") == digest:
        _HASHES.update(saved)
    _HASHES["__conf__"] = digest


def _save_hashes(grid: Grid) -> None:
    import json

    from pfl.atomic import atomic_write

    grid.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_HASHES)
    atomic_write(grid.out / ".config_hashes.json", lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------- cells


def load_tuning(grid: Grid) -> dict[str, Any]:
    f = grid.tuning_file
    return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else {}


def tuned_overrides(grid: Grid, strategy: str, tuning: dict[str, Any]) -> list[str]:
    entry = tuning.get(strategy) or {}
    return [f"{k}={v}" for k, v in (entry.get("best") or {}).items()]


def current_tuning(tuning: dict[str, Any], trials: Sequence[Cell]) -> dict[str, Any]:
    """The tuning entries made for the grid's present settings: an entry records the config
    hash of its defaults trial (trial 0), and one whose hash differs from today's (the preset or
    the grid's overrides changed since), or that records none, is tuned again."""
    today = {c.strategy: c.config_hash for c in trials if c.trial == 0}
    return {s: e for s, e in tuning.items() if s not in today or (e or {}).get("config_hash") == today[s]}


def tune_cells(grid: Grid, tuning: dict[str, Any]) -> list[Cell]:
    if not grid.tune["budget"]:
        return []
    cells = []
    fed = grid.tune["federation"]
    for s, ov in grid.strategies.items():
        if s in tuning:
            continue
        space = dict(compose([*grid.overrides, *ov, *grid.extra]).strategy.get("search") or {})
        if not space:
            continue
        for t, values in enumerate(sample_trials(space, grid.tune["budget"], s)):
            cells.append(Cell("tune", fed, s, grid.tune["seed"],
                              [*grid.overrides, *grid.federations[fed], *ov, *(f"{k}={v}" for k, v in values.items()),
                               *grid.extra, f"seed={grid.tune['seed']}"], trial=t, values=values))
    return cells


def grid_cells(grid: Grid, tuning: dict[str, Any]) -> list[Cell]:
    """Seed by seed, so that a grid stopped early holds whole seeds of every cell before it."""
    return [Cell("grid", f, s, seed, [*grid.overrides, *fov, *sov, *tuned_overrides(grid, s, tuning), *grid.extra,
                                      f"seed={seed}"])
            for seed in grid.seeds for f, fov in grid.federations.items() for s, sov in grid.strategies.items()]


def study_of(grid: Grid, stage: str) -> str:
    return f"{grid.study}-tuning" if stage == "tune" else grid.study


def finished_runs(uri: str, study: str) -> dict[str, Any]:
    """config_hash -> the latest FINISHED MLflow run of the study."""
    from pfl.tracking import open_client, sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.expanduser().exists():
        return {}
    client = open_client(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return {}
    from pfl.report import _search_all

    out: dict[str, Any] = {}
    for r in sorted(_search_all(client, exp.experiment_id), key=lambda r: r.info.start_time or 0):
        if r.info.status == "FINISHED" and r.data.tags.get("config_hash"):
            out[r.data.tags["config_hash"]] = r
    return out


def _pfl_command() -> list[str]:
    exe = shutil.which("pfl", path=str(Path(sys.executable).parent)) or shutil.which("pfl")
    return [exe] if exe else [sys.executable, "-c", "from pfl.cli import train_main; train_main()"]


CHECKPOINTS = "${paths.output_dir}/checkpoints/study"


def run_cell(cell: Cell, study: str, uri: str, log_dir: Path) -> tuple[int, float]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (cell.key.replace("/", "__") + ".log")
    # Checkpoints per study: a grid cell whose config equals a tuning trial's must not resume
    # (and log into) that trial's finished run in the tuning experiment.
    cmd = [*_pfl_command(), *cell.overrides, f"study={study}", "resume=true", "trainer.progress=false",
           f"logger.tracking_uri={uri}", f"paths.checkpoint_dir={CHECKPOINTS}/{study}"]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _RUNNING.add(proc)
        try:
            rc = proc.wait()
        finally:
            _RUNNING.discard(proc)
    return rc, time.perf_counter() - t0


#: the cells' processes now running: stopped with the runner (they checkpoint every round)
_RUNNING: set[subprocess.Popen] = set()


def _stop_running() -> None:
    import signal

    for proc in list(_RUNNING):
        if proc.poll() is None:
            # SIGTERM, not SIGINT: a cell started from a background job ignores SIGINT (POSIX shells
            # start background commands so); pfl ends its MLflow run KILLED on either, and
            # resume=true continues from the last round's checkpoint.
            proc.send_signal(signal.SIGTERM)
    for proc in list(_RUNNING):
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    h, rem = divmod(int(s), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def execute(cells: list[Cell], study: str, uri: str, jobs: int, log_dir: Path, say=print) -> list[Cell]:
    """Run the cells without a FINISHED run; returns those that failed."""
    done = finished_runs(uri, study)
    todo = [c for c in cells if c.config_hash not in done]
    say(f"{study}: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run ({jobs} at a time)")
    failed: list[Cell] = []
    times: dict[str, list[float]] = {}  # per federation: cells of another federation cost another time
    pending = set(range(len(todo)))
    pool = cf.ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(run_cell, c, study, uri, log_dir): i for i, c in enumerate(todo)}
        for n, fut in enumerate(cf.as_completed(futures), 1):
            c = todo[futures[fut]]
            pending.discard(futures[fut])
            rc, secs = fut.result()
            times.setdefault(c.federation, []).append(secs)
            left = len(todo) - n
            overall = float(np.mean([t for ts in times.values() for t in ts]))
            eta = sum(float(np.mean(times.get(todo[i].federation, [overall]))) for i in pending) / jobs
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {log_dir / (c.key.replace('/', '__') + '.log')})"
            say(f"[{len(cells) - left}/{len(cells)}] {c.key}: {status} in {_fmt_s(secs)}; {left} left, "
                f"about {_fmt_s(eta)} to go")
            if rc != 0:
                failed.append(c)
    except BaseException:
        # Ctrl-C or SIGTERM: start no queued cell, stop the running ones (they resume later).
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_running()
        raise
    pool.shutdown()
    return failed


class _PlainDumper(yaml.SafeDumper):
    """No &anchors / *aliases: a file people read and edit."""

    def ignore_aliases(self, data) -> bool:
        return True


def choose(grid: Grid, cells: list[Cell], uri: str, tuning: dict[str, Any]) -> dict[str, Any]:
    """Best trial per tuned strategy by the validation objective; written to the tuning file."""
    done = finished_runs(uri, study_of(grid, "tune"))
    obj = grid.tune["objective"]
    by_strategy: dict[str, list[Cell]] = {}
    for c in cells:
        by_strategy.setdefault(c.strategy, []).append(c)
    for s, trials in by_strategy.items():
        scored = [(done[c.config_hash].data.metrics.get(obj, -math.inf), c) for c in trials if c.config_hash in done]
        if len(scored) < len(trials):
            continue  # not all trials finished: choose next time
        best_value, best = max(scored, key=lambda t: (t[0], -t[1].trial))
        tuning[s] = {"best": best.values, "objective": obj, "value": float(best_value),
                     "config_hash": next(c.config_hash for c in trials if c.trial == 0),
                     "federation": grid.tune["federation"], "seed": grid.tune["seed"],
                     "trials": [{"values": c.values, "value": float(v), "run_id": done[c.config_hash].info.run_id}
                                for v, c in sorted(scored, key=lambda t: t[1].trial)]}
    if by_strategy:
        grid.tuning_file.parent.mkdir(parents=True, exist_ok=True)
        from pfl.atomic import atomic_write

        # Entries tuned for other settings stay on disk until a new choice replaces them, so a
        # re-tuning that fails or is stopped loses nothing.
        on_disk = {**load_tuning(grid), **tuning}
        text = ("# Written by pfl-study: the trial with the best validation objective per strategy. Delete an\n"
                "# entry to tune that strategy again.\n" + yaml.dump(on_disk, Dumper=_PlainDumper, sort_keys=True))
        atomic_write(grid.tuning_file, lambda f: f.write(text.encode()))
    return tuning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pfl-study", description=__doc__.split("\n\n")[0],
                                     epilog="Extra key=value arguments override every cell, e.g. "
                                     "`pfl-study results federation.rounds=20 federation.local_epochs=5`.")
    parser.add_argument("grid", nargs="?", default="results", help="a grid of conf/grid/ (default: results)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every cell")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the grid's)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what is left; run nothing")
    parser.add_argument("--report-only", action="store_true", help="only write RESULTS.md from what has finished")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: outputs/mlflow.db)")
    parser.add_argument("--only", action="append", default=None, metavar="FEDERATION",
                        help="run only this federation's cells (repeatable); RESULTS.md still covers the grid")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="run only these seeds, e.g. 1,2 (RESULTS.md still covers the grid)")
    args = parser.parse_args(argv)
    import signal

    from hydra import initialize_config_dir

    def on_term(signum, frame):  # a batch scheduler's SIGTERM: stop like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    try:
        from pfl.report import default_tracking_uri

        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise ConfigError("pfl-study argument", bad[0], "a grid name first, then key=value overrides")
        grid = load_grid(args.grid, args.overrides)
        uri = args.tracking_uri or default_tracking_uri()
        jobs = args.jobs or grid.jobs
        t0 = time.time()
        _load_hashes(grid)
        every_trial = _hash_cells(tune_cells(grid, {}))
        tuning = current_tuning(load_tuning(grid), every_trial)
        tcells = [c for c in every_trial if c.strategy not in tuning]
        _hash_cells(grid_cells(grid, tuning))
        _save_hashes(grid)
        if args.dry_run or args.report_only:
            _show(grid, tcells, uri, tuning)
            if args.report_only:
                from pfl.results import write_results

                path = write_results(grid, _hash_cells(grid_cells(grid, tuning)), uri, sitting_seconds=None)
                print(f"written {path}")
            return 0
        if tcells:
            failed = execute(tcells, study_of(grid, "tune"), uri, jobs, grid.out / "logs")
            tuning = choose(grid, tcells, uri, tuning)
            if failed:
                print(f"{len(failed)} tuning run(s) failed; their strategies are tuned when they finish: "
                      + ", ".join(c.key for c in failed), file=sys.stderr)
        cells = _hash_cells(grid_cells(grid, tuning))
        _save_hashes(grid)
        # A strategy whose tuning did not finish does not run untuned: its cells stay missing.
        untuned = {c.strategy for c in tcells} - set(tuning)
        if untuned:
            print("not run until tuned (a trial failed; run again to retry): " + ", ".join(sorted(untuned)),
                  file=sys.stderr)
        if args.only and (bad := [f for f in args.only if f not in grid.federations]):
            raise ConfigError("--only", bad[0], "a federation of the grid: " + ", ".join(grid.federations))
        chosen = [c for c in cells if c.strategy not in untuned and (not args.only or c.federation in args.only)
                  and (args.seeds is None or c.seed in args.seeds)]
        failed = execute(chosen, study_of(grid, "grid"), uri, jobs, grid.out / "logs")
        from pfl.results import write_results

        path = write_results(grid, cells, uri, sitting_seconds=time.time() - t0)
        print(f"written {path}" + (f"; {len(failed)} cell(s) failed and are listed as missing" if failed else ""))
        return 1 if failed or untuned else 0
    except PflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run the same command again to go on", file=sys.stderr)
        return 130


def _hash_cells(cells: list[Cell]) -> list[Cell]:
    for c in cells:
        if not c.config_hash:
            c.config_hash = _config_hash(c.overrides)
    return cells


def _show(grid: Grid, tcells: list[Cell], uri: str, tuning: dict[str, Any]) -> None:
    tdone = finished_runs(uri, study_of(grid, "tune"))
    if tcells:
        left = [c.key for c in tcells if c.config_hash not in tdone]
        print(f"tuning: {len(tcells)} trials, {len(tcells) - len(left)} finished" + (": left " + ", ".join(left)
                                                                                     if left else ""))
    untuned = [s for s in grid.strategies if s not in tuning and any(c.strategy == s for c in tcells)]
    cells = _hash_cells(grid_cells(grid, tuning))
    gdone = finished_runs(uri, study_of(grid, "grid"))
    left = [c for c in cells if c.config_hash not in gdone]
    print(f"grid {grid.name}: {len(cells)} cells, {len(cells) - len(left)} finished, {len(left)} left"
          + (f" (strategies still to tune, whose cells change once tuned: {', '.join(untuned)})" if untuned else ""))
    for c in left:
        print(f"  to run: {c.key}")


if __name__ == "__main__":
    sys.exit(main())
