"""HTTP endpoints: an index page, health and version probes, and two load
generators (``/io`` sleeps, ``/cpu`` burns CPU) for comparing worker and
thread settings."""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time

from flask import Blueprint, current_app, jsonify, render_template, request

from hello.migrate import schema_version

bp = Blueprint("hello", __name__)

IO_MAX_SECONDS = 10.0
IO_DEFAULT_SECONDS = 0.1
CPU_DEFAULT_N = 100_000


def _settings():
    return current_app.config["SETTINGS"]


def _bad_request(message: str):
    return jsonify(status="error", reason=message), 400


@bp.get("/")
def index():
    s = _settings()
    return render_template("index.html", name=s.name, release=s.release)


@bp.get("/version")
def version():
    s = _settings()
    return jsonify(name=s.name, release=s.release)


@bp.get("/runtime")
def runtime():
    """What this worker runs: Python, uWSGI, the names of its ``APP_*`` settings, and
    the one setting meant to be seen, ``APP_GREETING``.

    Names only, never other values: a deploy can check that a setting it added
    or removed is in effect without the app ever showing a secret.
    """
    try:
        import uwsgi  # only importable inside uWSGI

        server = uwsgi.version.decode()
    except ImportError:
        server = None
    return jsonify(python=platform.python_version(), uwsgi=server, pid=os.getpid(),
                   settings=sorted(k for k in os.environ if k.startswith("APP_")),
                   greeting=os.environ.get("APP_GREETING"))


@bp.get("/healthz")
def healthz():
    """200 when the config is present and the state dir takes a write.

    The write is real (a temp file created and removed) because a
    read-only mount or wrong owner shows up only when writing.
    """
    s = _settings()
    reason = _health_problem(s)
    body = {"status": "fail" if reason else "ok", "name": s.name, "release": s.release}
    if reason:
        body["reason"] = reason
    else:
        # Informational: a missing schema is the migrate step's business.
        body["schema_version"] = schema_version(s.state_dir)
    response = jsonify(body)
    response.status_code = 503 if reason else 200
    response.headers["Cache-Control"] = "no-store"
    return response


def _health_problem(s) -> str | None:
    if s.missing:
        return "missing config: " + ", ".join(s.missing)
    if not os.path.isdir(s.state_dir):
        return f"state dir {s.state_dir} does not exist"
    try:
        with tempfile.NamedTemporaryFile(dir=s.state_dir, prefix=".healthz-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return f"state dir {s.state_dir} is not writable: {exc.strerror or exc}"
    return None


@bp.get("/io")
def io_bound():
    """Sleep ``seconds`` (clamped to [0, 10]): stands for waiting on a database."""
    raw = request.args.get("seconds", str(IO_DEFAULT_SECONDS))
    try:
        seconds = float(raw)
    except ValueError:
        return _bad_request(f"seconds must be a number, got {raw!r}")
    if not math.isfinite(seconds):
        return _bad_request(f"seconds must be finite, got {raw!r}")
    seconds = min(max(seconds, 0.0), IO_MAX_SECONDS)
    started = time.perf_counter()
    time.sleep(seconds)
    return jsonify(kind="io", seconds=seconds, elapsed_ms=_ms_since(started))


@bp.get("/cpu")
def cpu_bound():
    """Sum the squares below ``n`` in a pure-Python loop (holds the GIL)."""
    raw = request.args.get("n", str(CPU_DEFAULT_N))
    try:
        n = int(raw)
    except ValueError:
        return _bad_request(f"n must be an integer, got {raw!r}")
    n = min(max(n, 0), _settings().cpu_max_n)
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i
    return jsonify(kind="cpu", n=n, result=total, elapsed_ms=_ms_since(started))


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
