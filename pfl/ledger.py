"""An append-only, hash-chained JSON-lines ledger of every round: who built the model, from what.

Each entry records SHA-256 digests of the global weights before and after the round, of each
participating client's update, the clients' sample counts, the config hash and the partition
digest, and the hash of the previous entry; its own hash covers all of that. Editing, removing
or reordering any entry breaks the chain at that round.

`pfl-verify RUN_DIR` (the checkpoint directory `<paths.checkpoint_dir>/<config_hash>/`, or an
MLflow run id) checks the chain and that `last.pt`, `final_model.pt` and the MLflow copies of
the ledger and the model match it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pfl.atomic import atomic_write
from pfl.background import InOrder
from pfl.errors import PflError
from pfl.fl.callbacks import Callback, RoundInfo

log = logging.getLogger(__name__)

GENESIS = "0" * 64
LEDGER = "ledger.jsonl"
LAST = "last.pt"
FINAL = "final_model.pt"
#: the tracker's name for the final weights among a run's MLflow artifacts
MLFLOW_MODEL = "global_model.pt"


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        t = weights[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def entry_hash(entry: Mapping) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class LedgerError(PflError):
    """A ledger that cannot be read or continued."""


def read_entries(path: Path) -> list[dict]:
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise LedgerError(f"{path}: line {n} is not a ledger entry ({e.msg})") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"{path}: line {n} is not a ledger entry (a JSON object)")
        entries.append(entry)
    return entries


class Ledger(Callback):
    """Appends one entry per round to `path`, and writes the final weights beside it at the end.

    Nothing is written before the run starts, so a run that fails validation leaves no files.
    Resuming after round k keeps entries 1..k (checked: a resumed run must extend an intact chain
    that ends at the checkpoint's weights) and drops later ones, which the resumed run redoes.
    """

    def __init__(self, path: Path, config_hash: str, partition_digest: str, resume_round: int = 0,
                 resume_weights: Mapping[str, torch.Tensor] | None = None, source: Path | None = None,
                 writer: InOrder | None = None):
        self.path, self.config_hash, self.partition_digest = Path(path), config_hash, partition_digest
        #: where the entries are appended and fsynced, off the round's critical path (shared with
        #: the checkpointer, in order: a checkpoint never lands before its round's entry); None: at once
        self.writer = writer
        self.resume_round = resume_round
        self.kept: list[dict] = []
        if resume_round:
            self.kept = self._resumable(Path(source) if source else self.path, resume_round, resume_weights)
        self.prev = self.kept[-1]["hash"] if self.kept else GENESIS

    def _resumable(self, source: Path, k: int, weights: Mapping[str, torch.Tensor] | None) -> list[dict]:
        hint = f"resume needs the intact ledger of the run it continues (run pfl-verify {source.parent}), or start afresh with resume=false"
        if not source.exists():
            raise LedgerError(f"resume: no {LEDGER} beside the checkpoint ({source}); {hint}")
        kept = [e for e in read_entries(source) if isinstance(e.get("round"), int) and e["round"] <= k]
        problems = check_chain(kept, self.config_hash, self.partition_digest)
        if not problems and len(kept) != k:
            problems = [Problem(len(kept) + 1, f"missing: the ledger ends at round {len(kept)}, the checkpoint is at round {k}")]
        if not problems and weights is not None and kept[-1].get("global_after") != weights_digest(weights):
            problems = [Problem(k, "the checkpoint's weights differ from the ledger's global_after")]
        if problems:
            raise LedgerError(f"resume: {source}: {problems[0]}; {hint}")
        return kept

    def on_run_start(self, server) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for name in (self.path.name, FINAL):  # temporary files of a run killed mid-write
            for torn in self.path.parent.glob(f".{name}.*.tmp"):
                torn.unlink(missing_ok=True)
        atomic_write(self.path, lambda fh: fh.write("".join(json.dumps(e, sort_keys=True) + "\n"
                                                            for e in self.kept).encode()))
        if not self.resume_round:  # a fresh run: a final model of an earlier run here is no longer ours
            (self.path.parent / FINAL).unlink(missing_ok=True)

    def on_round_end(self, info: RoundInfo) -> None:
        entry = {
            "round": info.rnd,
            "rounds": info.rounds,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config_hash": self.config_hash,
            "partition_digest": self.partition_digest,
            "global_before": weights_digest(info.global_before),
            "global_after": weights_digest(info.global_after),
            "updates": [{"client": u.cid, "num_samples": u.num_samples, "digest": weights_digest(u.weights)}
                        for u in info.updates],
            "dropped": list(info.dropped),
            "diverged": list(info.diverged),
            "prev": self.prev,
        }
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True) + "\n"
        if self.writer is None:
            _append(self.path, line)
        else:
            self.writer.submit(_append, self.path, line)
        self.prev = entry["hash"]

    def on_run_end(self, result) -> None:
        if self.writer is not None:  # every entry on disk before the final model joins them
            self.writer.close()
        # Beside the ledger, so the checkpoint directory alone proves what the final model is.
        atomic_write(self.path.parent / FINAL, lambda fh: torch.save(result.global_weights, fh))


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- verification


@dataclass
class Problem:
    round: int | None
    what: str

    def __str__(self) -> str:
        return f"round {self.round}: {self.what}" if self.round is not None else self.what


def check_chain(entries: Sequence[Mapping], config_hash: str | None = None,
                partition_digest: str | None = None) -> list[Problem]:
    """Every problem with a ledger's entries, each naming the round (as the entry states it)."""
    problems: list[Problem] = []
    if not entries:
        return problems
    chash = config_hash or entries[0].get("config_hash")
    pdig = partition_digest or entries[0].get("partition_digest")
    present = {e.get("round") for e in entries}
    prev: Mapping | None = None
    for i, e in enumerate(entries):
        expected = i + 1
        rnd = e.get("round")
        r = rnd if isinstance(rnd, int) else expected
        if e.get("hash") != entry_hash(e):
            problems.append(Problem(r, "entry edited: its content does not match its hash"))
        if rnd != expected:
            gap = range(expected, rnd) if isinstance(rnd, int) and rnd > expected else range(0)
            if gap and not present & set(gap):
                last = f" (and {len(gap) - 1} more)" if len(gap) > 1 else ""
                jump = (f"the ledger goes from round {expected - 1} to round {rnd}" if expected > 1
                        else f"the ledger starts at round {rnd}")
                problems.append(Problem(expected, f"entry missing{last} (removed): {jump}"))
            else:
                problems.append(Problem(r, f"out of order: line {expected} should hold round {expected} "
                                           "(entries reordered or duplicated)"))
        want_prev = prev.get("hash") if prev is not None else GENESIS
        if e.get("prev") != want_prev:
            what = "the first entry" if prev is None else f"the entry before it (round {prev.get('round')})"
            problems.append(Problem(r, f"chain broken: prev does not link to {what}"))
        if prev is not None and e.get("global_before") != prev.get("global_after"):
            problems.append(Problem(r, f"global_before differs from round {prev.get('round')}'s global_after"))
        if e.get("config_hash") != chash:
            problems.append(Problem(r, f"config hash {str(e.get('config_hash'))[:12]} differs from {str(chash)[:12]}"))
        if e.get("partition_digest") != pdig:
            problems.append(Problem(r, f"partition digest {str(e.get('partition_digest'))[:12]} "
                                       f"differs from {str(pdig)[:12]}"))
        prev = e
    return problems


def load_error(e: BaseException) -> tuple[bool, str]:
    """(refused, reason) for a failed torch.load(weights_only=True): refused when the file holds
    objects that unpickling would have to import or call; otherwise it is corrupt or no checkpoint."""
    text = str(e).strip()
    refused = isinstance(e, pickle.UnpicklingError) and "weights only" in text.lower()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if refused:
        # torch's first line suggests weights_only=False, the very thing not to do with such a file
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
    else:
        why = lines[0].split(". ")[0] if lines else ("empty file" if isinstance(e, EOFError) else type(e).__name__)
    return refused, why[:300]


def _load_weights(path: Path) -> tuple[Any, str | None]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001 - refused (pickled code) and corrupt alike fail verification
        refused, why = load_error(e)
        what = "refused: it holds objects that could run code" if refused else "unreadable (corrupt or truncated)"
        return None, f"{path.name} {what} ({why})"


def _is_weights(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def check_model(path: Path, entries: Sequence[Mapping], label: str | None = None) -> list[Problem]:
    """A final-weights file (a state dict) must hold the last round's global_after."""
    label = label or path.name
    obj, err = _load_weights(path)
    last = entries[-1]
    if err:
        return [Problem(last.get("round"), err)]
    if not _is_weights(obj):
        return [Problem(last.get("round"), f"{label} is not a state dict of tensors")]
    digest = weights_digest(obj)
    if digest == last.get("global_after"):
        return []
    other = [e.get("round") for e in entries if e.get("global_after") == digest]
    if other:
        return [Problem(last.get("round"), f"{label} holds the weights of round {other[-1]}, not of the "
                                           f"ledger's last round {last.get('round')} (entries removed or file replaced)")]
    return [Problem(last.get("round"), f"{label} weights differ from the ledger's global_after (file edited)")]


def check_checkpoint(path: Path, entries: Sequence[Mapping]) -> list[Problem]:
    """`last.pt` must be at the ledger's last round, with that round's weights and chain head."""
    ckpt, err = _load_weights(path)
    last = entries[-1]
    if err:
        return [Problem(last.get("round"), err)]
    if not isinstance(ckpt, Mapping) or not _is_weights(ckpt.get("global")):
        return [Problem(last.get("round"), f"{path.name} is not a pfl checkpoint")]
    rnd = ckpt.get("round")
    by_round = {e.get("round"): e for e in entries}
    problems = []
    if rnd != last.get("round"):
        problems.append(Problem(rnd, f"{path.name} is at round {rnd}, the ledger ends at round {last.get('round')}"))
    entry = by_round.get(rnd)
    if entry is None:
        return problems
    if weights_digest(ckpt["global"]) != entry.get("global_after"):
        problems.append(Problem(rnd, f"{path.name} weights differ from the ledger's global_after (file edited)"))
    head = ckpt.get("ledger_head")
    if head is not None and head != entry.get("hash"):
        problems.append(Problem(rnd, f"the ledger entry differs from the one {path.name} was written after "
                                     "(entry rewritten)"))
    if ckpt.get("config_hash") != entry.get("config_hash"):
        problems.append(Problem(rnd, f"{path.name} comes from another config"))
    return problems


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dir(run_dir: Path, report: Report | None = None) -> tuple[Report, list[dict]]:
    """Check the ledger, `last.pt` and `final_model.pt` of one checkpoint directory."""
    report = report or Report()
    path = run_dir / LEDGER
    if not path.exists():
        report.problems.append(Problem(None, f"no {LEDGER} in {run_dir} (removed, or not a pfl checkpoint directory)"))
        return report, []
    try:
        entries = read_entries(path)
    except LedgerError as e:
        report.problems.append(Problem(None, str(e)))
        return report, []
    if not entries:
        report.problems.append(Problem(None, f"{path} has no entries"))
        return report, entries
    report.problems += check_chain(entries)
    last = entries[-1]
    report.checked.append(f"{LEDGER}: {len(entries)} rounds, config {str(last.get('config_hash'))[:12]}, "
                          f"partition {str(last.get('partition_digest'))[:12]}, head {str(last.get('hash'))[:16]}")
    if (run_dir / LAST).exists():
        found = check_checkpoint(run_dir / LAST, entries)
        report.problems += found
        if not found:
            report.checked.append(f"{LAST}: round {last.get('round')} weights match the ledger")
    else:
        report.problems.append(Problem(last.get("round"), f"{LAST} missing (removed?)"))
    finished = last.get("round") == last.get("rounds")
    if (run_dir / FINAL).exists():
        found = check_model(run_dir / FINAL, entries)
        report.problems += found
        if not found:
            report.checked.append(f"{FINAL}: matches round {last.get('round')}")
    elif finished:
        report.problems.append(Problem(last.get("round"), f"{FINAL} missing though the ledger records the "
                                                          "last round (removed?)"))
    if isinstance(last.get("rounds"), int) and not finished:
        report.notes.append(f"run incomplete: {last.get('round')} of {last.get('rounds')} rounds recorded "
                            "(still running, or crashed: continue it with resume=true)")
    return report, entries


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def verify_mlflow(run_id: str, tracking_uri: str, report: Report | None = None) -> Report:
    """Resolve an MLflow run to its checkpoint directory and check that, plus the run's own copies
    of the ledger and final model (an anchor outside the directory)."""
    report = report or Report()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    db = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0] if tracking_uri.startswith("sqlite:///") else None
    if db is not None and not Path(db).exists():  # MLflow would create an empty store there
        raise PflError(f"--tracking-uri {tracking_uri!r}: no such MLflow store ({db})")
    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as e:  # noqa: BLE001 - not found and unreachable alike
        raise PflError(f"MLflow run {run_id} not found in {tracking_uri} "
                       f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    chash, cdir = run.data.tags.get("config_hash"), run.data.params.get("paths.checkpoint_dir")
    local_entries: list[dict] | None = None
    if chash and cdir and (Path(cdir) / chash).is_dir():
        report.checked.append(f"MLflow run {run_id} -> {Path(cdir) / chash}")
        _, local_entries = verify_dir(Path(cdir) / chash, report)
    else:
        report.notes.append(f"checkpoint directory of run {run_id} not found here "
                            f"({cdir}/{chash}); checking the run's MLflow artifacts only")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            art = Path(download_artifacts(run_id=run_id, artifact_path=LEDGER, dst_path=tmp,
                                          tracking_uri=tracking_uri))
        except Exception:  # noqa: BLE001 - absent artifact
            if run.info.status == "FINISHED":
                report.problems.append(Problem(None, f"MLflow artifact {LEDGER} missing from finished run {run_id}"))
            else:
                report.notes.append(f"MLflow run {run_id} is {run.info.status}: no ledger artifact yet")
            return report
        try:
            entries = read_entries(art)
        except LedgerError as e:
            report.problems.append(Problem(None, f"MLflow artifact {e}"))
            return report
        found = [Problem(p.round, f"MLflow artifact {LEDGER}: {p.what}") for p in check_chain(entries)]
        if not entries:
            found.append(Problem(None, f"MLflow artifact {LEDGER} has no entries"))
        report.problems += found
        if local_entries is not None and entries:
            for a, b in zip(entries, local_entries, strict=False):
                if a != b:
                    report.problems.append(Problem(a.get("round"), f"the MLflow copy of the ledger and {LEDGER} "
                                                                   "in the checkpoint directory differ"))
                    break
            else:
                if len(entries) != len(local_entries):
                    report.problems.append(Problem(None, f"the MLflow copy of the ledger has {len(entries)} "
                                                         f"rounds, the checkpoint directory's {len(local_entries)}"))
        if entries and not found:
            report.checked.append(f"MLflow artifact {LEDGER}: {len(entries)} rounds, chain intact")
            try:
                model = Path(download_artifacts(run_id=run_id, artifact_path=MLFLOW_MODEL, dst_path=tmp,
                                                tracking_uri=tracking_uri))
            except Exception:  # noqa: BLE001 - the run may have been logged with log_model=false
                report.notes.append(f"MLflow artifact {MLFLOW_MODEL} not found; final model not checked there")
            else:
                model_problems = check_model(model, entries, f"MLflow artifact {MLFLOW_MODEL}")
                report.problems += model_problems
                if not model_problems:
                    report.checked.append(f"MLflow artifact {MLFLOW_MODEL}: matches round {entries[-1].get('round')}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfl-verify",
        description="Check a run's provenance ledger: the hash chain, and that last.pt and the final "
                    "model match it. Exit 0 when intact, 1 when anything was edited, removed or reordered.")
    parser.add_argument("run", help="checkpoint directory (<paths.checkpoint_dir>/<config_hash>, holding "
                                    "ledger.jsonl and last.pt) or an MLflow run id")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"),
                        help="MLflow store of the run id (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)")
    args = parser.parse_args(argv)
    target = Path(args.run).expanduser()
    try:
        if target.is_dir():
            report, _ = verify_dir(target)
        elif _RUN_ID.match(args.run):
            report = verify_mlflow(args.run, args.tracking_uri)
        else:
            raise PflError(f"{args.run!r} is neither a directory nor an MLflow run id (32 hex digits)")
    except PflError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.checked:
        print(f"ok    {line}")
    for line in report.notes:
        print(f"note  {line}")
    if report.ok:
        print(f"verified: {args.run}")
        return 0
    for p in sorted(report.problems, key=lambda p: (p.round is None, p.round or 0)):
        print(f"FAIL  {p}", file=sys.stderr)
    print(f"pfl-verify: {len(report.problems)} problem(s) in {args.run}: the run's history was altered "
          "or is incomplete", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
