"""The exposure report's figures: who was shown what, and what each segment and version got from it.

Pure functions over joined samples (:class:`streamrec.events.TrainingSample`, the samples topic):
:func:`exposure_report` is the whole report as a dict (``cluster/report.py`` reads the topic and
writes it as JSON, HTML and PNGs). Definitions:

* An *impression* is one served slate; its *CTR* is the share of impressions with any click-like
  positive (a reward above zero), as everywhere in streamrec; a *slot* is one position of one slate.
* *Exposure* of an item: the slots it filled. *Coverage*: items exposed / catalog size.
  *Gini*: of exposure over the catalog (unexposed catalog items count as zeros when the catalog
  size is known). *Novelty*: mean self-information of exposed items, popularity = exposure.
* *Popularity deciles*: the exposed items ranked by their positives (then exposure), split into
  ten groups of (nearly) equal item count, most popular first; per decile its exposure share and
  its slots' click rate. *Long-tail share*: exposure of the items outside the head (the top
  ``head_share`` of that ranking).
* *Segments*: the impression's context (age band, gender, device) and the user's state: *new*
  on their first impression in the report's range, *returning* after.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from rl.metrics import gini, novelty

__all__ = ["AGE_BANDS", "age_band", "exposure_report"]

AGE_BANDS = ((0, 18, "<18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"), (45, 55, "45-54"),
             (55, 130, "55+"))
SEGMENTS = ("age", "gender", "device", "user")


def age_band(age: Any) -> str:
    if isinstance(age, (int, float)) and not isinstance(age, bool):
        for lo, hi, name in AGE_BANDS:
            if lo <= age < hi:
                return name
    return "unknown"


def _label(value: Any) -> str:
    return value if isinstance(value, str) and value else "unknown"


def _summary(samples: Sequence, catalog_size: int | None) -> dict[str, Any]:
    slates = [s.items for s in samples]
    exposure = Counter(i for s in slates for i in s)
    n = len(samples)
    out: dict[str, Any] = {"impressions": n, "users": len({s.user_id for s in samples}),
                           "items_exposed": len(exposure),
                           "ctr": sum(any(r > 0 for r in s.rewards) for s in samples) / n if n else None}
    if exposure:
        counts = list(exposure.values())
        if catalog_size:
            counts += [0] * max(0, catalog_size - len(exposure))
            out["coverage"] = len(exposure) / catalog_size
        out["gini"] = gini(counts)
        out["novelty"] = novelty(slates, exposure, float(sum(exposure.values())))
    return out


def exposure_report(samples: Iterable, catalog_size: int | None = None, head_share: float = 0.2) -> dict[str, Any]:
    """The report (see the module docstring) over ``samples``, oldest first by ``ts``."""
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must be in (0, 1), got {head_share}")
    if catalog_size is not None and catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    samples = sorted(samples, key=lambda s: s.ts)
    report: dict[str, Any] = {"overall": _summary(samples, catalog_size)}
    if not samples:
        return {**report, "deciles": [], "long_tail_share": None, "segments": {}, "versions": {}}

    # popularity deciles
    exposure: Counter = Counter()
    positives: Counter = Counter()
    for s in samples:
        for item, r in zip(s.items, s.rewards):
            exposure[item] += 1
            if r > 0:
                positives[item] += 1
    ranked = sorted(exposure, key=lambda i: (-positives[i], -exposure[i], i))
    total = sum(exposure.values())
    deciles = []
    for d, group in enumerate(np.array_split(np.array(ranked, dtype=object), min(10, len(ranked)))):
        shown = sum(exposure[i] for i in group)
        deciles.append({"decile": d + 1, "items": len(group), "exposure_share": shown / total,
                        "click_rate": sum(positives[i] for i in group) / shown})
    head = set(ranked[:max(1, math.ceil(head_share * len(ranked)))])
    report["deciles"] = deciles
    report["long_tail_share"] = sum(c for i, c in exposure.items() if i not in head) / total

    # segments
    seen: set[str] = set()
    groups: dict[str, dict[str, list]] = {k: defaultdict(list) for k in SEGMENTS}
    for s in samples:
        ctx = s.context or {}
        groups["age"][age_band(ctx.get("age"))].append(s)
        groups["gender"][_label(ctx.get("gender"))].append(s)
        groups["device"][_label(ctx.get("device"))].append(s)
        groups["user"]["returning" if s.user_id in seen else "new"].append(s)
        seen.add(s.user_id)
    n = len(samples)
    report["segments"] = {
        dim: {value: {"impressions": len(ss), "exposure_share": len(ss) / n,
                      "ctr": sum(any(r > 0 for r in s.rewards) for s in ss) / len(ss)}
              for value, ss in sorted(g.items())}
        for dim, g in groups.items()}

    by_version: dict[int, list] = defaultdict(list)
    for s in samples:
        by_version[int(s.policy_version)].append(s)
    report["versions"] = {str(v): _summary(ss, catalog_size) for v, ss in sorted(by_version.items())}
    return report
