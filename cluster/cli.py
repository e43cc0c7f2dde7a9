"""``streamrec``: bring the loop up, look at it, take it down.

    streamrec up [--config ray_config.yaml] [--simulate]   # foreground; Ctrl-C stops everything
    streamrec status [--json]                               # from any shell
    streamrec down                                          # from any shell
    streamrec report [--since T] [--until T] [--out DIR]    # exposure report over the samples topic
    streamrec experiment start NAME --arm b=12:0.1 [--arm ucb=linucb:0.1] [--shadow s=13:0.05]   # an operator's A/B test
    streamrec experiment status | stop [--reason R]
    streamrec replay --until T [--out DIR]                  # rebuild the lineage from the topics, compare
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from streamrec.config import ConfigError, default_config_path, load_settings
from streamrec.runstate import RunDir

__all__ = ["app", "main"]

app = typer.Typer(help="streamrec: a streaming recommender on Ray that learns while it serves.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=False)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="Ray Serve config with streamrec's args "
                         "(default: $STREAMREC_CONFIG, ./ray_config.yaml, or the bundled one).")
RunDirOpt = typer.Option(None, "--run-dir", help="Run directory (default: $STREAMREC_RUN_DIR or ~/.streamrec/run).")


def _load(config: Optional[Path]):
    path = config or default_config_path()
    try:
        return path, load_settings(path)
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {e}")
        raise typer.Exit(2)


@app.command()
def up(
    config: Optional[Path] = ConfigOpt,
    simulate: bool = typer.Option(False, "--simulate", help="Drive the HTTP API with simulated users."),
    rate: float = typer.Option(20.0, help="Simulated user visits per second (with --simulate)."),
    run_dir: Optional[Path] = RunDirOpt,
    dashboard_port: Optional[int] = typer.Option(None, help="Override ray.dashboard_port (0: a free port)."),
) -> None:
    """Bring up the whole loop in the foreground: broker, Ray and every component; Ctrl-C stops it."""
    from cluster.broker import BrokerError
    from cluster.local_ray import prepare_local_head
    from cluster.stack import LocalStack, StackError
    from streamrec.config import ray_section

    rd = RunDir(run_dir)
    ray_cfg = ray_section(config or default_config_path())  # read before Ray is imported (validation imports it)
    prepare_local_head(rd.path / "ray_token", ray_cfg.get("address"), ray_cfg.get("node_ip_address"))
    path, settings = _load(config)
    stack = LocalStack(settings, rd, config_path=str(path), dashboard_port=dashboard_port)
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        with console.status("starting") as st:
            state = stack.start(progress=lambda part: st.update(f"starting {part}"))
    except (StackError, BrokerError) as e:
        err.print(f"[red]streamrec up failed[/red]: {e}")
        raise typer.Exit(1)
    console.print(_where_table(state))
    if simulate:
        from cluster.simulate import HttpSimulator, synthetic_users_for

        keys = [k.get_secret_value() for k in settings.auth.api_keys]
        stack.simulator = HttpSimulator(stack.http_url, synthetic_users_for(settings), rate_per_s=rate,
                                        k=settings.policy.slate_size, api_key=keys[0] if keys else None).start()
        console.print(f"simulated users: {rate:g} visits/s against {stack.http_url}")
    console.print("streamrec is up; Ctrl-C (or `streamrec down` in another shell) stops it.")
    try:
        while not stop.wait(2.0):
            snap = stack.snapshot()
            if stack.simulator is not None:
                console.print(_loop_line(snap))
    finally:
        if stack.simulator is not None:
            stack.simulator.stop()
        with console.status("stopping"):
            stack.stop()
        console.print("streamrec stopped.")


@app.command()
def down(run_dir: Optional[Path] = RunDirOpt,
         timeout: float = typer.Option(60.0, help="Seconds to wait for a clean stop before killing.")) -> None:
    """Stop a running `streamrec up` (from any shell) and everything it started."""
    from cluster.stack import stop_running_stack

    result = stop_running_stack(RunDir(run_dir), timeout_s=timeout)
    if result["stopped"]:
        console.print(f"streamrec (pid {result['pid']}) stopped.")
    else:
        console.print(result["reason"])


@app.command()
def status(run_dir: Optional[Path] = RunDirOpt,
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """What runs where: Ray, the broker and its topics, Serve apps, policy version, consumer lag."""
    from cluster.stack import stack_status

    info = stack_status(RunDir(run_dir))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        console.print(_status_table(info))
    if not info.get("running"):
        raise typer.Exit(3)


@app.command()
def embed(config: Optional[Path] = ConfigOpt,
          full: bool = typer.Option(False, "--full", help="Re-embed everything, not only new or changed items."),
          output: Optional[Path] = typer.Option(None, help="Output directory (default: embedding.output_dir)."),
          num_encoders: Optional[int] = typer.Option(None, help="Encoder actors (default: one per GPU, or CPUs/2).")) -> None:
    """Embed the configured catalog with Ray Data (joins RAY_ADDRESS, else a local Ray)."""
    from cluster.jobs.embed import run_embedding_job

    _, settings = _load(config)
    manifest = run_embedding_job(settings, output_dir=str(output) if output else None, full=full,
                                 num_encoders=num_encoders)
    t = Table(title=f"embeddings ({manifest['model_id']}, {manifest['seconds']:.1f}s)")
    for col in ("kind", "count", "embedded", "kept", "dir"):
        t.add_column(col)
    for kind, o in manifest["outputs"].items():
        t.add_row(kind, str(o["count"]), str(o["embedded"]), str(o["kept"]), o["dir"])
    console.print(t)


@app.command()
def report(config: Optional[Path] = ConfigOpt, run_dir: Optional[Path] = RunDirOpt,
           since: Optional[str] = typer.Option(None, help="From this time (ISO 8601, UTC unless it names a zone; or epoch s)."),
           until: Optional[str] = typer.Option(None, help="Until this time (exclusive)."),
           out: Path = typer.Option(Path("report"), help="Directory for report.json, the PNG charts and report.html.")) -> None:
    """Exposure report over the samples topic: exposure and CTR per segment, item popularity
    deciles (Gini, long-tail share, coverage, novelty), per policy version."""
    from cluster.report import parse_time, run_report

    _, settings = _load(config)
    try:
        t0, t1 = parse_time(since), parse_time(until)
    except ValueError as e:
        err.print(f"[red]bad time[/red]: {e}")
        raise typer.Exit(2)
    bootstrap = settings.kafka.bootstrap_servers or ((RunDir(run_dir).read() or {}).get("broker") or {}).get("bootstrap")
    if not bootstrap:
        err.print("[red]no Kafka[/red]: set kafka.bootstrap_servers, or run `streamrec up` (its embedded broker)")
        raise typer.Exit(2)
    path, n = run_report(settings, bootstrap, out, t0, t1)
    console.print(f"{n} impressions -> {path}")


@app.command()
def replay(config: Optional[Path] = ConfigOpt, run_dir: Optional[Path] = RunDirOpt,
           until: Optional[str] = typer.Option(None, help="Rebuild up to this time (ISO 8601 or epoch s; default: now)."),
           out: Path = typer.Option(Path("replay"), help="Directory for the replayed store and replay.json."),
           seed: int = typer.Option(0, help="The trainer's seed (the stack's trainer runs with 0).")) -> None:
    """Replay audit: rebuild the policy lineage from the samples topic and the trainer's rounds log
    into a separate store, and compare its gate decisions and weights with what was served."""
    import time as _time

    from cluster.replay import replay as run_replay
    from cluster.report import parse_time

    path, settings = _load(config)
    try:
        t1 = parse_time(until) or _time.time()
    except ValueError as e:
        err.print(f"[red]bad time[/red]: {e}")
        raise typer.Exit(2)
    state = RunDir(run_dir).read() or {}
    bootstrap = settings.kafka.bootstrap_servers or (state.get("broker") or {}).get("bootstrap")
    if not bootstrap:
        err.print("[red]no Kafka[/red]: set kafka.bootstrap_servers, or run `streamrec up` (its embedded broker)")
        raise typer.Exit(2)
    if state.get("broker", {}).get("embedded"):  # the stack's embedded broker: the log id it gave the trainer
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={
            "log_id": f"embedded:{state['broker']['bootstrap']}:{state['broker'].get('pid')}"})})
    result = run_replay(settings, bootstrap, t1, out, seed=seed)
    w = result.get("weights") or {}
    console.print(f"{result['rounds']} rounds ({result['starts']} trainer starts) up to {t1:.0f}: "
                  f"{result['samples_equal']} took the same samples, {result['decisions_equal']} made the same decision; "
                  f"served v{result.get('served_at_until')} vs replayed v{result.get('replayed_version')}"
                  + (f", weights within {w['max_relative_l2']:.2g} (tolerance {w['tolerance']:g})" if w else ""))
    for d in result["differences"]:
        console.print(f"  [yellow]difference[/yellow] {('round ' + str(d['round']) + ': ') if 'round' in d else ''}"
                      f"{d['what']}: {d['why']}")
    console.print(("[green]match[/green]" if result["match"] else "[yellow]differences explained above[/yellow]")
                  + f" -> {out / 'replay.json'}")
    if not result["match"]:
        raise typer.Exit(1)


@app.command()
def config(config: Optional[Path] = ConfigOpt) -> None:
    """Validate a config file and print the effective settings (secrets masked)."""
    path, settings = _load(config)
    console.print(f"[green]{path}[/green] is valid")
    print(json.dumps(settings.public_dict(), indent=2))


experiment_app = typer.Typer(help="Operator experiments: arms of stored policy versions served to (or computed "
                              "in shadow for) sticky shares of users, measured against the control arm.",
                              no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
UrlOpt = typer.Option(None, "--url", help="The API (default: the running `streamrec up`'s).")
KeyOpt = typer.Option(None, "--key", envvar="STREAMREC_ADMIN_KEY",
                      help="Admin key (auth.admin_keys; else an API key when the server has keys).")


def _admin(method: str, url: Optional[str], run_dir: Optional[Path], key: Optional[str], operator: Optional[str],
           **kw) -> dict:
    """One call of the API's ``/v1/admin/experiment``; prints the error and exits 1 on a 4xx/5xx."""
    import httpx

    if url is None:
        url = (((RunDir(run_dir).read() or {}).get("serve")) or {}).get("url")
        if not url:
            err.print("[red]no API[/red]: pass --url, or run `streamrec up`")
            raise typer.Exit(2)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if operator:
        headers["X-Streamrec-Operator"] = operator
    try:
        r = httpx.request(method, url.rstrip("/") + "/v1/admin/experiment", headers=headers, timeout=30, **kw)
    except httpx.HTTPError as e:
        err.print(f"[red]cannot reach {url}[/red]: {e}")
        raise typer.Exit(1)
    body = r.json()
    if r.status_code >= 400:
        err.print(f"[red]{r.status_code}[/red]: {body.get('error', body)}")
        raise typer.Exit(1)
    return body


def parse_arm(spec: str, shadow: bool) -> dict:
    """``NAME=VERSION:SHARE`` (a stored version) or ``NAME=ALGORITHM:SHARE`` (the trainer trains it
    for the arm) -> an arm (ValueError naming what is wrong)."""
    name, eq, rest = spec.partition("=")
    what, colon, share = rest.partition(":")
    if not (eq and colon and name and what):
        raise ValueError(f"{spec!r}: write an arm as NAME=VERSION:SHARE or NAME=ALGORITHM:SHARE, e.g. b=12:0.1")
    try:
        share_value = float(share)
    except ValueError:
        raise ValueError(f"{spec!r}: SHARE must be a number") from None
    arm = {"name": name, "share": share_value, "shadow": shadow}
    return {**arm, "version": int(what)} if what.isdigit() else {**arm, "algorithm": what}


@experiment_app.command("start")
def experiment_start(
    name: str = typer.Argument(..., help="The experiment's name (also its assignment salt unless --salt)."),
    arm: list[str] = typer.Option([], "--arm", help="A served arm: NAME=VERSION:SHARE, or NAME=ALGORITHM:SHARE "
                                                    "(linucb, thompson, egreedy, popularity, random: trained for the "
                                                    "arm beside the live lineage); repeat for more."),
    shadow: list[str] = typer.Option([], "--shadow", help="A shadow arm, computed and logged, never shown: "
                                                          "NAME=VERSION:SHARE or NAME=ALGORITHM:SHARE."),
    salt: Optional[str] = typer.Option(None, help="Salt of the users' assignment hash (default: the name)."),
    operator: Optional[str] = typer.Option(None, help="Your name, for the store's history."),
    url: Optional[str] = UrlOpt, key: Optional[str] = KeyOpt, run_dir: Optional[Path] = RunDirOpt,
) -> None:
    """Start an experiment; every replica serves it within a second."""
    try:
        arms = [parse_arm(a, False) for a in arm] + [parse_arm(a, True) for a in shadow]
    except ValueError as e:
        err.print(f"[red]bad arm[/red]: {e}")
        raise typer.Exit(2)
    body = {"name": name, "arms": arms, **({"salt": salt} if salt else {})}
    console.print(_experiment_table(_admin("PUT", url, run_dir, key, operator, json=body)))


@experiment_app.command("stop")
def experiment_stop(reason: str = typer.Option("stopped", help="Why, for the store's history."),
                    operator: Optional[str] = typer.Option(None, help="Your name, for the store's history."),
                    url: Optional[str] = UrlOpt, key: Optional[str] = KeyOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Stop the running experiment; its users see the live version again."""
    out = _admin("DELETE", url, run_dir, key, operator, params={"reason": reason})
    console.print(f"experiment {out['experiment']['name']} stopped.")


@experiment_app.command("status")
def experiment_status(url: Optional[str] = UrlOpt, key: Optional[str] = KeyOpt, run_dir: Optional[Path] = RunDirOpt,
                      as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The running experiment and each arm's figures (CTR, lift over control, ILD, coverage)."""
    out = _admin("GET", url, run_dir, key, None)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        console.print(_experiment_table(out))


def _experiment_table(out: dict[str, Any]) -> Table:
    exp, figures = out.get("experiment"), out.get("figures") or {}
    t = Table(title="no experiment running" if exp is None else f"experiment {exp['name']}")
    for col in ("arm", "version", "users", "impressions", "CTR [95%]", "lift vs control", "ILD", "coverage"):
        t.add_column(col)
    by_arm, shadows = figures.get("by_arm") or {}, figures.get("shadow") or {}
    arms = [] if exp is None else exp["arms"]
    rows = [("policy", "live", None), ("control", "random", None),
            *([("canary", "candidate", None)] if "canary" in by_arm else []),  # the trainer's canary arm
            *((a["name"], _arm_version(a), a) for a in arms)]
    for name, version, a in rows:
        f = by_arm.get(name)
        users = "" if a is None else f"{a['share']:.0%}" + (" shadow" if a["shadow"] else "")
        if a is not None and a["shadow"]:
            sh = shadows.get(name) or {}
            est = sh.get("estimate")
            t.add_row(name, version, users, str(sh.get("slates", 0)) + " computed",
                      "" if not est else f"{est['estimator']} {est['ctr']:.3f} [{est['ctr_low']:.3f}, {est['ctr_high']:.3f}] "
                                         f"(shown: {sh['served_ctr']:.3f})",
                      "", "", f"overlap {sh['overlap']:.2f}" if sh else "")
            continue
        lift = (f or {}).get("lift") or {}
        t.add_row(name, version, users, str((f or {}).get("impressions", 0)),
                  "" if f is None else f"{f['ctr']:.3f} [{f['low']:.3f}, {f['high']:.3f}]",
                  "" if lift.get("lift") is None else f"{lift['lift']:+.3f} [{lift['low']:+.3f}, {lift['high']:+.3f}] "
                                                      f"p={lift['p_value']:.3g}",
                  "" if f is None else f"{f['ild']:.3f}", "" if f is None else f"{f['coverage']:.3f}")
    return t


def _arm_version(arm: dict) -> str:
    """An arm's version column: ``v12``, or ``linucb v31`` (``linucb, training`` before its first)."""
    v = arm.get("version")
    if arm.get("algorithm") is None:
        return f"v{v}"
    return f"{arm['algorithm']} v{v}" if v is not None else f"{arm['algorithm']}, training"


def _loop_line(snap: dict[str, Any]) -> str:
    """One line per tick while simulating: is the policy learning?"""
    sim = snap.get("simulator") or {}
    tr = snap.get("trainer") or {}
    bar = ""
    ctr = sim.get("ctr_recent")
    if ctr is not None:
        n = int(round(ctr * 20))
        bar = "[green]" + "█" * n + "[/green]" + "·" * (20 - n)
    return (f"{sim.get('impressions', 0):>7} impressions  CTR {ctr if ctr is not None else '-':<6} {bar} "
            f"v{tr.get('serving_version', '?')} ({tr.get('published', 0)} published, {tr.get('rejected', 0)} held)"
            f"  {_lift(tr.get('arms'))}")


def _lift(arms: dict | None) -> str:
    """``lift +0.041 [+0.012, +0.070] vs control`` (green when significant), or where it stands."""
    if not arms or arms.get("lift") is None:
        n = ((arms or {}).get("control") or {}).get("impressions", 0)
        return f"lift: waiting for the control arm ({n} impressions)"
    text = f"lift {arms['lift']:+.3f} [{arms['low']:+.3f}, {arms['high']:+.3f}] vs control"
    if arms["significant"]:
        return f"[green]{text}[/green]" if arms["lift"] > 0 else f"[red]{text}[/red]"
    return text


def _where_table(state: dict[str, Any]) -> Table:
    t = Table(title="streamrec: what runs where")
    t.add_column("part")
    t.add_column("where")
    t.add_column("notes")
    b = state.get("broker") or {}
    if b:
        t.add_row("kafka", b["bootstrap"], f"embedded Tansu, pid {b['pid']}" if b["embedded"] else "external cluster")
        t.add_row("topics", ", ".join(state.get("topics", [])), "")
    r = state.get("ray") or {}
    if r:
        t.add_row("ray", r["gcs_address"], "local head (this process)" if r["started_here"] else "joined cluster")
        if r.get("dashboard_url"):
            auth = f"RAY_AUTH_TOKEN_PATH={r['auth_token_path']} " if r.get("auth_token_path") else ""
            t.add_row("ray dashboard / jobs", r["dashboard_url"], f"{auth}ray job submit --address " + r["dashboard_url"])
    e = state.get("embeddings")
    if e:
        t.add_row("embeddings", e["dir"], e["model_id"])
    t.add_row("stream ingest", "Ray actors streamrec-ingest-*", "consumer group of the impressions + feedback topics")
    p = state.get("policy") or {}
    if p:
        t.add_row("trainer + policy store", "Ray actors streamrec-trainer, streamrec-policy-store",
                  f"{p['algorithm']}, serving version {p['version']}")
    sv = state.get("serve") or {}
    if sv:
        t.add_row("HTTP API", sv["url"], f"{sv['url']}/docs (OpenAPI), /metrics, /healthz")
    return t


#: A training round running longer than this is shown as such in ``status`` (rounds take seconds).
STUCK_ROUND_S = 60.0


def _status_table(info: dict[str, Any]) -> Table:
    t = Table(title=f"streamrec status ({info['run_dir']})")
    t.add_column("part")
    t.add_column("state")
    t.add_column("details")
    if not info.get("running"):
        t.add_row("streamrec", "[red]not running[/red]", "start it with `streamrec up`")
        return t
    t.add_row("streamrec", f"[green]{info.get('phase')}[/green]", f"pid {info['pid']}, config {info.get('config')}")
    k = info.get("kafka")
    if k:
        ok = "[green]reachable[/green]" if k.get("reachable") else f"[red]unreachable[/red] {k.get('error', '')}"
        t.add_row("kafka", ok, f"{k['address']} ({'embedded' if k['embedded'] else 'external'})")
        for name, present in (k.get("topics") or {}).items():
            t.add_row("  topic", "present" if present else "[red]missing[/red]", name)
    r = info.get("ray")
    if r:
        snap = info.get("snapshot") or {}
        res = snap.get("ray_resources") or {}
        details = f"{r['gcs_address']}, {snap.get('ray_nodes', '?')} node(s), {res.get('CPU', '?')} CPU, {res.get('GPU', 0)} GPU"
        t.add_row("ray", "[green]up[/green]", details)
        if r.get("dashboard_url"):
            t.add_row("  dashboard", "", r["dashboard_url"])
        if r.get("auth_token_path"):
            t.add_row("  auth", "token", f"RAY_AUTH_TOKEN_PATH={r['auth_token_path']} (mode 0600)")
    e = info.get("embeddings")
    if e:
        counts = ", ".join(f"{k} {v['count']}" for k, v in e.items() if isinstance(v, dict))
        t.add_row("embeddings", "[green]ready[/green]", f"{counts} ({e['model_id']})")
    snap = info.get("snapshot") or {}
    ing = snap.get("ingest")
    if ing:
        state = "[green]consuming[/green]" if not ing["errors"] else f"[red]{ing['errors'][0]}[/red]"
        t.add_row("ingest", state, f"{ing['actors']} actor(s), {ing['events_per_s']:.0f} events/s, "
                  f"{ing['samples']} samples, join hit {ing['join_hit_rate']:.0%}, dlq {ing['dlq']}, late {ing['late']}")
        lag = ing.get("lag") or {}
        if lag:
            t.add_row("  consumer lag", str(sum(lag.values())), ", ".join(f"{k}={v}" for k, v in sorted(lag.items())))
        behind = ing.get("behind") or []
        if behind:  # normal while a backlog drains; a partition that stays here holds the join's windows open
            t.add_row("  reading behind", f"{len(behind)} partition(s)",
                      f"{', '.join(behind)}; join watermark {ing.get('watermark_lag_s', 0.0):.1f} s behind the clock")
        scaling = (ing.get("scaling") or {}).get("changes") or []
        if scaling:
            t.add_row("  lag controller", f"{len(scaling)} change(s)", ", ".join(
                f"{c['actors']}->{c['target']} at lag {c['lag']}" for c in scaling))
    if snap.get("samples"):
        t.add_row("trainer input", "", f"samples log at {snap['samples']['position']}: {snap['samples']['taken']} "
                  f"taken, {snap['samples']['duplicates']} duplicates dropped")
    if snap.get("profiles"):
        t.add_row("profiles", "", f"{snap['profiles']['users']} users, {snap['profiles']['events']} feedback events")
    tr = snap.get("trainer")
    if tr:
        state = "[green]training[/green]" if not tr.get("error") else f"[red]{tr['error']}[/red]"
        if not tr.get("error") and tr.get("in_round_s", 0.0) >= STUCK_ROUND_S:
            state = f"[yellow]one round running for {tr['in_round_s']:.0f} s[/yellow]"
        t.add_row("policy", state, f"{tr['algorithm']} v{tr['serving_version']}: {tr['published']} published, "
                  f"{tr['rejected']} held back by the gate, {tr['samples']} samples trained")
        arms = tr.get("arms")
        if arms and arms.get("control"):
            t.add_row("  vs control", f"{arms['control']['impressions']} control impressions",
                      f"{_lift(arms)}; CTR policy {arms['policy']['ctr'] or 0:.3f}, control {arms['control']['ctr'] or 0:.3f}")
        gate = tr.get("last_gate")
        if gate:
            t.add_row("  last gate", "pass" if gate["ok"] else "held", f"{gate['why']}; OPE CTR {gate['ope_ctr']:.3f} "
                      f"vs measured {gate['measured_ctr']:.3f}")
    for app_name, a in (snap.get("serve") or {}).items():
        reps = ", ".join(f"{d}: " + "/".join(f"{n} {s}" for s, n in st.items()) for d, st in a["deployments"].items())
        t.add_row(f"serve {app_name}", a["status"], reps)
    sim = snap.get("simulator")
    if sim:
        t.add_row("simulated users", f"CTR {sim['ctr_recent']}", f"{sim['impressions']} impressions; by version: " +
                  ", ".join(f"v{v}: {d['ctr']:.3f}" for v, d in sim["ctr_by_version"].items()))
    return t


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
