"""streamrec-haproxy's rewrite of the configuration Ray Serve renders for its HAProxy ingress, on
Ray's own template rendered by Ray's own code, checked by the real HAProxy binary (``-c``)."""

import json
import subprocess

import pytest

from serve import haproxy_ingress as hi


def _ray_config(tmp_path, host: str, port: int = 18000, **ports) -> str:
    """The configuration Ray 2.60's HAProxy manager writes (no backends yet) for an HTTP ``host``."""
    from ray.serve._private import haproxy as h
    from ray.serve.config import HTTPOptions

    cfg = h.HAProxyConfig(socket_path=f"{tmp_path}/admin.sock", server_state_base=str(tmp_path),
                          server_state_file=f"{tmp_path}/server-state", metrics_socket_path=f"{tmp_path}/m.sock",
                          http_options=HTTPOptions(host=host, port=port), retry_on=hi.RETRY_ON, **ports)
    api = h.HAProxyApi(cfg, config_file_path=f"{tmp_path}/haproxy.cfg")
    api._generate_config_file_internal()
    return f"{tmp_path}/haproxy.cfg"


def _binds(text: str) -> dict[str, list[str]]:
    out, section = {}, ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        if line.split()[:1] == ["bind"]:
            out.setdefault(section, []).append(line.split()[1])
    return out


@pytest.mark.parametrize("host, frontend", [("0.0.0.0", "*:18000"), ("127.0.0.1", "127.0.0.1:18000")])
def test_only_the_http_frontend_keeps_its_host_and_the_stats_and_metrics_listeners_are_loopback(tmp_path, host, frontend):
    path = _ray_config(tmp_path, host)
    before = _binds(open(path).read())
    assert before["listen stats"] == ["*:8404"] and before["frontend prometheus"] == [":9101"]  # Ray's template

    after = _binds(open(hi.confine_file(path, "127.0.0.1")).read())
    assert after == {"frontend http_frontend": [frontend], "frontend prometheus": ["127.0.0.1:9101"],
                     "listen stats": ["127.0.0.1:8404"]}


def test_haproxys_own_errors_become_the_apis_json_statuses(tmp_path):
    text = open(hi.confine_file(_ray_config(tmp_path, "127.0.0.1"), "127.0.0.1")).read()
    files = {int(w[1]): w[2] for w in (line.split() for line in text.splitlines()) if w[:1] == ["errorfile"]}
    assert set(files) == {502, 503, 504}
    for code, status, retry in [(502, 503, "1"), (503, 503, "1"), (504, 504, None)]:
        raw = open(files[code], "rb").read()
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(h.split(": ", 1) for h in lines[1:])
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)
        assert headers.get("Retry-After") == retry
        assert json.loads(body)["error"]


def test_the_confined_configuration_is_valid_for_the_haproxy_serve_runs(tmp_path):
    confined = hi.confine_file(_ray_config(tmp_path, "0.0.0.0"), "127.0.0.1")
    binary = hi.real_haproxy()
    run = subprocess.run([binary, "-c", "-f", confined], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_wrapper_execs_haproxy_with_the_confined_configuration(tmp_path):
    """The console script, as Serve runs it: ``-f CONFIG`` replaced, every other argument kept."""
    path = _ray_config(tmp_path, "127.0.0.1")
    run = subprocess.run([hi.wrapper_path(), "-c", "-f", path], capture_output=True, text=True, timeout=30,
                         env={"RAY_SERVE_HAPROXY_BINARY_PATH": hi.wrapper_path(), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "127.0.0.1:8404" in open(f"{path}.streamrec").read()


def test_comments_and_other_sections_pass_through_unchanged():
    text = "global\n    maxconn 10\n# bind *:1 in a comment\nfrontend http_frontend\n    bind *:8000\nlisten x\n  bind [::]:99 ssl\n"
    out = hi.confine(text, admin_host="127.0.0.1", error_files={}, not_retried=())
    assert out == "global\n    maxconn 10\n# bind *:1 in a comment\nfrontend http_frontend\n    bind *:8000\nlisten x\n  bind 127.0.0.1:99 ssl\n"


def test_throughput_mode_names_the_wrapper_as_serves_haproxy():
    assert hi.ingress_env("standard") == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25"}
    env = hi.ingress_env("throughput", wrapper="/usr/local/bin/streamrec-haproxy")
    assert env == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25", "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": "/usr/local/bin/streamrec-haproxy",
                   "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


def test_a_feedback_is_never_replayed_by_the_ingress(tmp_path):
    text = open(hi.confine_file(_ray_config(tmp_path, "127.0.0.1"), "127.0.0.1")).read()
    frontend = text.split("frontend http_frontend\n", 1)[1].split("\nbackend ", 1)[0]
    assert "    http-request disable-l7-retry if { path_end /v1/feedback }" in frontend.splitlines()


def test_haproxy_answers_a_path_nobody_serves_with_a_json_404(tmp_path):
    """The real HAProxy on the confined configuration (no application deployed yet)."""
    import time

    import httpx

    from cluster.broker import free_port

    port, stats, metrics = free_port(), free_port(), free_port()
    confined = hi.confine_file(_ray_config(tmp_path, "127.0.0.1", port, stats_port=stats, metrics_port=metrics),
                               "127.0.0.1")
    proc = subprocess.Popen([hi.real_haproxy(), "-db", "-f", confined], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, r = time.monotonic() + 20, None
        while r is None and time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/recommend?x=\"y", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
        assert r is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json() == {"error": "no route for /v1/recommend"}
    finally:
        proc.kill()
        proc.wait()


def test_every_haproxy_the_wrapper_started_is_recorded_and_down_stops_it_and_nothing_else(tmp_path):
    """The wrapper appends the pid HAProxy runs under to PIDS_ENV's file; `streamrec down`
    (cluster.stack.stop_recorded_haproxies) stops those still running HAProxy, not a process that
    took a recorded pid since."""
    import os
    import time

    from cluster.broker import free_port
    from cluster.stack import HAPROXY_PIDS, stop_recorded_haproxies

    port, stats, metrics = free_port(), free_port(), free_port()
    config = _ray_config(tmp_path, "127.0.0.1", port, stats_port=stats, metrics_port=metrics)
    record = tmp_path / HAPROXY_PIDS
    proc = subprocess.Popen([hi.wrapper_path(), "-db", "-f", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, hi.PIDS_ENV: str(record)})
    other = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 20
        while not (record.exists() and record.read_text().split()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.read_text().split() == [str(proc.pid)]  # exec keeps the wrapper's pid
        with open(record, "a") as f:
            f.write(f"{other.pid}\n")
        assert hi.recorded_haproxies(record) == [proc.pid]
        assert stop_recorded_haproxies(tmp_path) == [proc.pid]
        assert proc.wait(timeout=10) is not None and other.poll() is None
        assert not record.exists()
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()
