"""``streamrec report``: the exposure report over the samples topic, as JSON, PNG charts and one HTML page.

    streamrec report [--config ray_config.yaml] [--since 2026-12-01T00:00] [--until ...] [--out report/]

Reads every joined sample (impression + the feedback it got, with its context and serving
version) written in the range from ``kafka.topics.samples``, computes
:func:`rl.exposure.exposure_report`, and writes ``report.json``, ``deciles.png``,
``segments.png``, ``versions.png`` and ``report.html`` (which shows the PNGs and the tables; it
needs nothing else to open).
"""

from __future__ import annotations

import html
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rl.exposure import exposure_report
from streamrec.events import decode_samples

__all__ = ["run_report", "read_samples", "write_report", "parse_time"]


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from an ISO 8601 time (UTC when it names no zone) or a number; None for None."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {value!r} (ISO 8601, e.g. 2026-12-01T09:30, or epoch seconds)") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def read_samples(bootstrap: str, settings, since: float | None = None, until: float | None = None,
                 timeout_s: float = 600.0) -> list:
    """The samples whose impressions were served in [since, until) (epoch seconds), from the samples
    topic up to where it ended when the read began (a running loop keeps writing behind it)."""
    from streamrec.eventbus import KafkaLogReader

    reader = KafkaLogReader(bootstrap, settings.kafka.topics.samples, f"streamrec-report-{uuid.uuid4().hex[:8]}",
                            client_id="streamrec-report", security=settings.kafka.security)
    try:
        # a sample is written a reward window after its impression: start that much earlier
        start = None if since is None else reader.offsets_for_time(int((since - 60) * 1000))
        at = reader.assign(start or None)
        if at is None:
            return []
        # (a fetch returns whole batches: reaching the high watermark, which the embedded broker
        # reports as the last batch's base offset + 1, brings the rest of that batch along)
        ends = reader.high_watermarks(list(at))
        out, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = all(at[p] >= ends.get(p, 0) for p in at)
            for p, offset, value in reader.read(5_000, 0.2 if done else 0.5):  # when done: what is already fetched
                at[p] = offset + 1
                out.extend(s for s in decode_samples(value)
                           if (since is None or s.ts >= since) and (until is None or s.ts < until))
            if done:
                break
        seen: set[str] = set()
        return [s for s in out if not (s.event_id in seen or seen.add(s.event_id))]  # a replayed copy counts once
    finally:
        reader.close()


def _charts(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)

    d = report["deciles"]
    if d:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([x["decile"] for x in d], [x["exposure_share"] for x in d], color="#4c72b0", label="exposure share")
        ax.plot([x["decile"] for x in d], [x["click_rate"] for x in d], "o-", color="#dd8452", label="click rate per slot")
        ax.set_xlabel("item popularity decile (1 = most clicked)")
        ax.set_xticks([x["decile"] for x in d])
        ax.legend()
        ax.set_title("Exposure by item popularity")
        save(fig, "deciles.png")
    seg = report["segments"]
    if seg:
        fig, axes = plt.subplots(1, len(seg), figsize=(4 * len(seg), 3.5), squeeze=False)
        for ax, (dim, values) in zip(axes[0], seg.items()):
            labels = list(values)
            ax.bar(range(len(labels)), [values[v]["ctr"] for v in labels], color="#55a868")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=45, ha="right")
            ax.set_title(f"CTR by {dim}")
        save(fig, "segments.png")
    vs = report["versions"]
    if vs:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        keys = list(vs)
        ax.plot(range(len(keys)), [vs[k]["ctr"] for k in keys], "o-", label="CTR")
        ax.plot(range(len(keys)), [vs[k].get("gini", 0) for k in keys], "s--", label="exposure Gini")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys)
        ax.set_xlabel("policy version")
        ax.legend()
        ax.set_title("Per policy version")
        save(fig, "versions.png")
    return names


def _table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    cols = sorted({c for r in rows.values() for c in r})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *cols])

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    def row(k: str, r: dict[str, Any]) -> str:
        cells = "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols)
        return f"<tr><th>{html.escape(k)}</th>{cells}</tr>"

    body = "".join(row(k, r) for k, r in rows.items())
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def write_report(report: dict[str, Any], out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """``report.json``, the PNG charts and ``report.html`` in ``out``; returns the HTML's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**(meta or {}), **report}, indent=2))
    charts = _charts(report, out)
    parts = [_table("Overall", {"all": report["overall"]}),
             f"<p>Long-tail share of exposure: {report['long_tail_share']}</p>" if report["deciles"] else "",
             *(f'<img src="{c}" alt="{c}">' for c in charts),
             _table("Popularity deciles", {str(d["decile"]): d for d in report["deciles"]}),
             *(_table(f"Segment: {dim}", values) for dim, values in report["segments"].items()),
             _table("Policy versions", report["versions"])]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>streamrec exposure report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head>"
            f"<body><h1>streamrec exposure report</h1><p>{html.escape(json.dumps(meta or {}))}</p>"
            + "".join(parts) + "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path


def run_report(settings, bootstrap: str, out: str | Path, since: float | None = None,
               until: float | None = None) -> tuple[Path, int]:
    """Read the samples served in [since, until), report on them into ``out``: (the HTML's path,
    the impressions read). The catalog size comes from the live embedding run, when there is one."""
    from streamrec.vectors import read_manifest

    samples = read_samples(bootstrap, settings, since, until)
    try:
        catalog = (read_manifest(settings.embedding.output_dir) or {}).get("outputs", {}).get("items", {}).get("count")
    except OSError:
        catalog = None
    meta = {"since": since, "until": until, "samples_topic": settings.kafka.topics.samples, "catalog_size": catalog}
    return write_report(exposure_report(samples, catalog_size=catalog), out, meta), len(samples)
