"""Replay audit: rebuild the policy lineage from the topics and compare it with what was served.

``streamrec replay --until T --out DIR``:

1. reads the trainer's rounds log (``<trainer.checkpoint_dir>/rounds/``, :data:`rl.trainer_loop.ROUNDS`):
   every start of the trainer and every round up to ``T``, with the records of the samples topic
   each round took, in order;
2. reads those records back from the samples topic (:func:`read_records`);
3. runs a :class:`rl.trainer_loop.TrainerLoop` with the run's settings and seed over them, round by
   round, into a store and checkpoint directory of its own under ``DIR`` (a start of the trainer
   after the first is replayed as one: a new loop from the replay's own checkpoint, as the trainer
   resumed from its own);
4. compares: each round's samples (count and id digest), its gate decision and the version it
   published; then the weights of the version served at ``T`` (the policy store's history) with the
   replay's version at the same point, tensor by tensor.

The result (``replay.json``) says ``match`` when every round took the same samples and made the
same decision and every tensor is within :data:`WEIGHTS_TOLERANCE` (relative L2), and otherwise
lists each difference with its explanation: samples no longer in the topic (retention), a
duplicate the trainer's bounded memory of ids let through, a round trained on another catalog
version, a version pruned from the store, a canary judged on what replicas served, or (the rest) a
float difference beyond the tolerance.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from actors.policy_store import PolicyDirectory
from rl.trainer_loop import ROUNDS, TrainerLoop, ids_digest, run_records
from rl.weights import unpack
from streamrec.events import TrainingSample, decode_samples
from streamrec.storage import Location

__all__ = ["read_rounds", "read_records", "replay", "rebuild", "compare_weights", "WEIGHTS_TOLERANCE"]

WEIGHTS_TOLERANCE = 1e-3
"""Largest relative L2 difference (``|replayed - served| / |served|``) of any tensor of the version
served at T that still counts as the same weights: the same samples in the same order, the same
seed and the same code give the same weights up to float rounding (a replay runs torch with one
thread, as the trainer's Ray worker does; another thread count can reorder sums)."""


def read_rounds(checkpoint_dir: str, until: float | None = None) -> list[dict]:
    """The rounds log's entries (``kind`` start or round) written at or before ``until``, oldest first."""
    loc = Location(checkpoint_dir)
    out: list[dict] = []
    for f in loc.files(ROUNDS, ".jsonl"):
        name = f.rsplit("/", 1)[-1]
        for line in loc.read_bytes(f"{ROUNDS}/{name}").decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                if until is None or entry["ts"] <= until:
                    out.append(entry)
    return sorted(out, key=lambda e: e["ts"])


def read_records(bootstrap: str, settings, wanted: Iterable[tuple[int, int]],
                 timeout_s: float = 600.0) -> dict[tuple[int, int], list[TrainingSample]]:
    """The samples of each (partition, offset) record of the samples topic in ``wanted`` that the
    topic still holds (retention may have dropped the oldest)."""
    from streamrec.eventbus import KafkaLogReader

    want = set(wanted)
    if not want:
        return {}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for p, o in want:
        first[p], last[p] = min(first.get(p, o), o), max(last.get(p, o), o)
    reader = KafkaLogReader(bootstrap, settings.kafka.topics.samples, f"streamrec-replay-{uuid.uuid4().hex[:8]}",
                            client_id="streamrec-replay", security=settings.kafka.security)
    out: dict[tuple[int, int], list[TrainingSample]] = {}
    try:
        at = reader.assign(first)
        if at is None:
            return {}
        ends = reader.high_watermarks(list(at))
        todo = {p for p in first if p in at}
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while todo and time.monotonic() < deadline and quiet < 10:
            records = reader.read(5_000, 0.5)
            quiet = 0 if records else quiet + 1
            for p, offset, value in records:
                if (p, offset) in want:
                    out[(p, offset)] = decode_samples(value)
                if p in todo and (offset >= last[p] or offset + 1 >= ends.get(p, 0) > last[p]):
                    todo.discard(p)
    finally:
        reader.close()
    return out


class _Rounds:
    """The samples source a replayed :class:`TrainerLoop` reads: each ``take`` hands out the next
    recorded round's samples, with the ids already handed out dropped (the trainer's SampleLog
    drops a redelivered sample the same way)."""

    def __init__(self):
        self.next: list[TrainingSample] = []
        self.last: list[TrainingSample] = []
        self.taken = 0
        self.seen: set[str] = set()

    def take(self, max_n: int, min_n: int = 1) -> list[TrainingSample]:
        out = []
        for s in self.next:
            if s.event_id not in self.seen:
                self.seen.add(s.event_id)
                out.append(s)
        self.taken += len(self.next)
        self.next, self.last = [], out
        return out

    def position(self) -> dict:
        return {"replay": self.taken}

    def seek(self, position, written_at=None) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def compare_weights(served: dict[str, np.ndarray], replayed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per tensor, the relative L2 difference; ``max`` over them (inf when the names or shapes differ)."""
    out: dict[str, Any] = {"tensors": {}, "max": 0.0}
    for name in sorted(set(served) | set(replayed)):
        a, b = served.get(name), replayed.get(name)
        if a is None or b is None or a.shape != b.shape:
            d = float("inf")
        else:
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            d = float(np.linalg.norm(b64 - a64) / max(np.linalg.norm(a64), 1e-12))
        out["tensors"][name] = d
        out["max"] = max(out["max"], d)
    return out


def _served_at(history: list[dict], until: float) -> int | None:
    """The version serving at ``until`` by the store's history (publish, promote or rollback)."""
    version = None
    for h in history:
        if h["ts"] <= until and h["action"] in ("publish", "promote", "rollback"):
            version = int(h["version"])
    return version


def replay(settings, bootstrap: str, until: float, out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Rebuild the lineage up to ``until`` (epoch seconds) under ``out_dir`` and compare (module doc)."""
    import torch

    from streamrec.vectors import load_catalog

    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = read_rounds(settings.trainer.checkpoint_dir, until)
    rounds = [e for e in entries if e["kind"] == "round"]
    report: dict[str, Any] = {"until": until, "rounds": len(rounds), "starts": sum(e["kind"] == "start" for e in entries),
                              "differences": [], "decisions_equal": 0, "samples_equal": 0}
    if not entries or entries[0]["kind"] != "start":
        report["differences"].append({"what": "rounds log", "why": "no trainer start recorded before T: the rounds "
                                      f"log at {settings.trainer.checkpoint_dir} begins after it or is missing"})
        return _finish(report, out)
    wanted = [r for e in rounds for r in run_records(e["records"])]
    records = read_records(bootstrap, settings, wanted)
    return rebuild(settings, entries, records, load_catalog(settings.embedding.output_dir), out, report, seed)


def rebuild(settings, entries: list[dict], records: dict[tuple[int, int], list[TrainingSample]], catalog,
            out: Path, report: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Steps 3 and 4 of the module doc: ``entries`` from :func:`read_rounds` (the first a start),
    ``records`` from :func:`read_records`, ``catalog`` a :class:`streamrec.vectors.Catalog`."""
    replay_settings = settings.model_copy(update={"trainer": settings.trainer.model_copy(update={
        "store_dir": str(out / "store"), "checkpoint_dir": str(out / "checkpoint")})})
    store = PolicyDirectory(out / "store", keep=1_000_000)
    source = _Rounds()

    def new_loop() -> TrainerLoop:
        return TrainerLoop(replay_settings, catalog.ids, catalog.vectors, source, store, rows=catalog.rows,
                           num_rows=catalog.num_rows, row_ids=catalog.row_ids, seed=seed)

    loop = new_loop()
    loop.publish_initial()
    versions: dict[int, int] = {1: 1}  # served version -> the replay's version at the same point
    n_round, last = 0, entries[0]["ts"]
    for e in entries[1:]:
        if e["kind"] == "start":
            loop.close()
            loop = new_loop()
            continue
        n_round += 1
        recs = run_records(e["records"])
        lost = [r for r in recs if r not in records]
        source.next = [s for r in recs if r in records for s in records[r]]
        if lost:
            report["differences"].append({"round": n_round, "what": "samples", "why": f"{len(lost)} of its {len(recs)} "
                                          "records are no longer in the samples topic (retention)"})
        if e["num_rows"] != loop.spec.num_rows:
            report["differences"].append({"round": n_round, "what": "catalog", "why": f"trained with {e['num_rows'] - 1} "
                                          f"item rows; the live catalog has {loop.spec.num_rows - 1}: the replay stops here"})
            break
        result = loop.round()
        last = e["ts"]
        handed = source.last
        if len(handed) == e["taken"] and ids_digest(s.event_id for s in handed) == e["digest"]:
            report["samples_equal"] += 1
        elif not lost:
            report["differences"].append({"round": n_round, "what": "samples", "recorded": e["taken"],
                                          "replayed": len(handed), "why": "the same records, other samples kept: the "
                                          "trainer forgets ids after ingest.reward_window_s x 4 (at least 600 s), so a "
                                          "copy written later trained twice there and once here"})
        replayed_ok = None if result is None else bool(result.get("ok"))
        published_alike = ((result or {}).get("version") is None) == (e["version"] is None)
        if replayed_ok == e["ok"] and published_alike:
            report["decisions_equal"] += 1
        else:
            report["differences"].append({"round": n_round, "what": "gate", "recorded": {"ok": e["ok"], "version": e["version"]},
                                          "replayed": {"ok": replayed_ok, "version": (result or {}).get("version")},
                                          "why": _why_decisions_differ(e, result, lost)})
        if e["version"] is not None and (result or {}).get("version") is not None:
            versions[int(e["version"])] = int(result["version"])
        if e.get("rolled_back") is not None and (result or {}).get("rolled_back"):
            versions[int(e["rolled_back"])] = int(result["rolled_back"]["to"])
    loop.close()
    live = PolicyDirectory(settings.trainer.store_dir)
    # what served after the last round replayed (a round's publish is in the history before its log line)
    served = _served_at(live.history(1_000_000), last)
    report["last_round_at"] = last
    report["served_at_until"] = served
    report["replayed_version"] = versions.get(served) if served is not None else None
    if served is not None and report["replayed_version"] is not None:
        try:
            _, blob = live.get(served)
        except KeyError:
            report["differences"].append({"what": "weights", "why": f"version {served} was pruned from the store "
                                          f"(trainer.keep_versions): its weights cannot be compared"})
        else:
            _, mine = store.get(report["replayed_version"])
            w = compare_weights(unpack(blob), unpack(mine))
            report["weights"] = {"max_relative_l2": w["max"], "tolerance": WEIGHTS_TOLERANCE, "tensors": w["tensors"]}
            if not w["max"] <= WEIGHTS_TOLERANCE:
                report["differences"].append({"what": "weights", "why": f"version {served}'s tensors differ from the "
                                              f"replay's by up to {w['max']:.3g} (relative L2) > {WEIGHTS_TOLERANCE:g}"})
    elif served is not None:
        report["differences"].append({"what": "weights", "why": f"version {served} served at T has no replayed "
                                      "counterpart: an earlier round decided otherwise (see above)"})
    return _finish(report, out)


def _why_decisions_differ(recorded: dict, result: dict | None, lost: list) -> str:
    if lost:
        return "the round's samples are not all in the topic any more"
    if recorded.get("canary") is not None or (result or {}).get("canary") is not None:
        return "a canary round: its evidence is what replicas served while it ran, which the replay cannot re-serve"
    return "the same samples gave another estimate: the gate's figures differ beyond float rounding (see weights)"


def _finish(report: dict[str, Any], out: Path) -> dict[str, Any]:
    report["match"] = not report["differences"]
    (out / "replay.json").write_text(json.dumps(report, indent=2, default=str))
    return report
