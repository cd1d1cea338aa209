"""Serving benchmark: the example app under four servers on one kbench lab host, load by wrk.

Modes: (a) Flask's threaded dev server; (b) ``uwsgi --http`` standalone; (c) nginx ->
uWSGI unix socket exactly as ``fab bootstrap`` + ``fab deploy`` set it up; (d) gunicorn
(gthread) behind nginx. (b) and (d) get the deployed worker x thread capacity. Load comes
from the controller with wrk, only to the lab host's address. Writes docs/bench/serving.md
and PNGs.

    .venv/bin/python bench/serving.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from typing import Any

import benchlib as bl
from benchlib import log

from keel.inventory import Inventory
from roles import apps

GUNICORN = "gunicorn==23.0.0"
DEV, UWSGI_HTTP, NGINX_UWSGI, NGINX_GUNICORN = (
    "flask dev server", "uwsgi --http", "nginx -> uwsgi (fab deploy)", "nginx -> gunicorn")
MODES = {DEV: ("bench-dev.service", 5000), UWSGI_HTTP: ("bench-uwsgi-http.service", 9090),
         NGINX_UWSGI: ("hello.service", 80), NGINX_GUNICORN: ("bench-gunicorn.service", 8080)}
IO_SECONDS = 0.1
CPU_N = 300000
ENDPOINTS = {"io": f"/io?seconds={IO_SECONDS}", "cpu": f"/cpu?n={CPU_N}"}

# Run on the host as root: start the comparison servers as transient units of the app user.
SETUP = r"""
set -e
APP=/srv/hello/current
V=$(readlink -f $APP/.venv 2>/dev/null || ls -d /srv/hello/venvs/* | head -n 1)
ENVF=/srv/hello/shared/env
COMMON="--uid=hello --gid=hello -p WorkingDirectory=$APP -p EnvironmentFile=$ENVF
 --setenv=APP_STATE_DIR=/srv/hello/shared/state --setenv=APP_NAME=hello --setenv=PYTHONPATH=$APP"
# Bench only: open the comparison ports in the firewall bootstrap installed (the host is
# thrown away afterwards).
nft insert rule inet filter input tcp dport '{ 5000, 8080, 9090 }' accept
systemd-run --unit=bench-dev $COMMON $V/bin/python -c \
  "from hello import create_app; create_app().run(host='0.0.0.0', port=5000, threaded=True)"
systemd-run --unit=bench-uwsgi-http $COMMON $V/bin/uwsgi --http 0.0.0.0:9090 --master \
  --module 'hello:create_app()' --processes @P@ --threads @T@ --enable-threads --need-app \
  --lazy-apps --single-interpreter --auto-procname --die-on-term --disable-logging \
  --http-keepalive=1
python3 -m venv /srv/bench-gunicorn
/srv/bench-gunicorn/bin/pip install -q --disable-pip-version-check -r $APP/requirements.txt @GUNICORN@
systemd-run --unit=bench-gunicorn $COMMON -p RuntimeDirectory=bench-gunicorn \
  -p RuntimeDirectoryMode=0755 /srv/bench-gunicorn/bin/gunicorn -w @P@ --threads @T@ \
  -k gthread --umask 0 -b unix:/run/bench-gunicorn/g.sock 'hello:create_app()'
cat > /etc/nginx/sites-enabled/bench-gunicorn <<'EOF'
server {
    listen 8080;
    location / {
        proxy_pass http://unix:/run/bench-gunicorn/g.sock;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
}
EOF
nginx -t -q && systemctl reload nginx
"""

# Run on the host: RSS of each mode's processes, and the uWSGI workers the stats socket lists.
PROBE = r"""
import json, os, socket, subprocess
units = @UNITS@
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    return ppid, rss, cmd
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            procs[int(p)] = stat(p)
        except (OSError, StopIteration):
            pass
out = {}
for u in units:
    main = int(subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", u],
                              capture_output=True, text=True).stdout.strip() or 0)
    if main not in procs:
        continue
    kids = [(pid, rss, cmd) for pid, (ppid, rss, cmd) in procs.items() if ppid == main]
    workers = [k for k in kids if "http" not in k[2]] or [(main, procs[main][1], procs[main][2])]
    out[u] = {"main_rss_kb": procs[main][1], "workers": len(workers),
              "worker_rss_kb": [w[1] for w in workers]}
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect("/run/hello/stats.sock")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    ws = json.loads(data)["workers"]
    out["uwsgi_stats"] = {"active": sum(1 for w in ws if w["pid"] > 0 and w["status"] != "cheap"),
                          "configured": len(ws), "statuses": [w["status"] for w in ws]}
except OSError as exc:
    out["uwsgi_stats"] = {"error": str(exc)}
print(json.dumps(out))
"""


def wrk(url: str, conns: int, seconds: int) -> dict[str, Any]:
    """One bounded wrk run; req/s, p50/p99 (ms), requests and errors."""
    threads = min(conns, 2)
    proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
                           "--timeout", "5s", "--latency", url], capture_output=True, text=True,
                          timeout=seconds + 60)
    return parse_wrk(proc.stdout + proc.stderr)


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    def find(pattern: str, default: str = "0") -> str:
        m = re.search(pattern, out)
        return m.group(1) if m else default

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(find(r"Requests/sec:\s+([\d.]+)")),
        "p50": _ms(find(r"\s50%\s+(\S+)", "nan")),
        "p99": _ms(find(r"\s99%\s+(\S+)", "nan")),
        "requests": int(find(r"(\d+) requests in")),
        "non2xx": int(find(r"Non-2xx or 3xx responses: (\d+)")),
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "raw": out[-1500:],
    }


def probe(lab: Any, address: str) -> dict[str, Any]:
    units = json.dumps([u for u, _ in MODES.values()])
    res = bl.ssh(lab, address, f"python3 - <<'PY'\n{PROBE.replace('@UNITS@', units)}\nPY\n",
                 timeout=60)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="concurrency 4 and 16, 5 s runs")
    p.add_argument("--seconds", type=int, help="seconds per wrk run (default 10; quick 5)")
    p.add_argument("--report", default="serving",
                   help="name of the report files in docs/bench (default serving)")
    args = p.parse_args()
    seconds = args.seconds or (5 if args.quick else 10)
    warmup = 2 if args.quick else 3
    concs = [4, 16] if args.quick else [1, 4, 16, 64]
    started = time.monotonic()
    bl.ensure_wrk()
    bl.ensure_venv("plot")
    info = bl.machine_info()
    work = bl.WORK / "serving"
    inv = work / "inv" / "lab.yml"
    results: dict[str, Any] = {"runs": [], "memory": {}, "uwsgi_workers": {}}
    with bl.lab_session() as lab:
        host = bl.fresh_hosts(lab, 1, inv)[0]
        for task in ("bootstrap", "deploy"):
            log(f"fab {task}")
            bl.timed([sys.executable, "-m", "fabric", task, "--inventory", str(inv)],
                     timeout=1500, log_path=work / f"fab-{task}.log")
        spec = Inventory.load(inv).hosts()[0]
        app = app_settings(lab, host.address, spec)
        setup = (SETUP.replace("@P@", str(app["processes"])).replace("@T@", str(app["threads"]))
                 .replace("@GUNICORN@", GUNICORN))
        log("starting the comparison servers")
        bl.ssh(lab, host.address, setup, timeout=900)
        wait_ready(lab, host.address)
        results["versions"] = host_versions(lab, host.address)
        results["app"] = {k: app[k] for k in ("processes", "threads", "cheaper",
                                               "cheaper_initial")}
        # Modes are interleaved within each (endpoint, concurrency) cell, so a change in
        # the machine's background load hits every mode alike.
        for ep, path in ENDPOINTS.items():
            for c in concs:
                for mode, (_unit, port) in MODES.items():
                    url = f"http://{host.address}:{port}{path}"
                    wrk(url, c, warmup)  # warm-up: imports, lazy workers, cheaper spawns
                    stats: dict[str, Any] = {}
                    proc = subprocess.Popen(
                        ["wrk", "-t", str(min(c, 2)), "-c", str(c), "-d", f"{seconds}s",
                         "--timeout", "5s", "--latency", url],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    if mode == NGINX_UWSGI:
                        time.sleep(max(1, int(seconds * 0.7)))
                        stats = probe(lab, host.address).get("uwsgi_stats", {})
                    out, _ = proc.communicate(timeout=seconds + 60)
                    r = {"mode": mode, "endpoint": ep, "conns": c, "load": bl.load_now(),
                         **parse_wrk(out)}
                    if stats:
                        results["uwsgi_workers"][f"{ep}@{c}"] = stats
                    results["runs"].append(r)
                    log(f"{mode:28s} {ep:3s} c={c:3d}: {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} "
                        f"ms  p99 {r['p99']:7.1f} ms  errors {r['non2xx'] + r['socket_errors']}")
        mem = probe(lab, host.address)
        results["memory"] = {mode: mem.get(unit, {}) for mode, (unit, _port) in MODES.items()}
        results["uwsgi_events"] = uwsgi_events(lab, host.address)
    bl.save_json(bl.DOCS / f"{args.report}.json", {"info": info, **results})
    text = report(results, info, concs, seconds, warmup, args.quick, started, args.report)
    (bl.DOCS / f"{args.report}.md").write_text(text)
    for ep in ENDPOINTS:
        for metric, label in (("rps", "requests/s"), ("p99", "p99 latency (ms)")):
            bl.plot({"kind": "line", "title": f"/{ep}: {label} by concurrency", "x": concs,
                     "xlabel": "concurrent connections", "ylabel": label,
                     "log": metric == "p99",
                     "series": {m: [next((r[metric] for r in results["runs"] if r["mode"] == m
                                          and r["endpoint"] == ep and r["conns"] == c), None)
                                    for c in concs] for m in MODES}},
                    bl.DOCS / f"{args.report}-{ep}-{metric}.png")
    print(text)


def uwsgi_events(lab: Any, address: str) -> dict[str, int]:
    """How often the deployed uWSGI spawned, cheapened or killed workers (from its journal)."""
    patterns = {"workers spawned": "spawned uWSGI worker", "workers cheapened": "cheaped",
                "harakiri": "HARAKIRI", "listen queue full": "listen queue"}
    script = "".join(f"echo {key.replace(' ', '_')}=$(journalctl -u hello.service --no-pager | "
                     f"grep -c '{pat}'); " for key, pat in patterns.items())
    out = bl.ssh(lab, address, script, check=False).stdout
    return {k.replace("_", " "): int(v or 0) for k, v in
            (ln.split("=", 1) for ln in out.splitlines() if "=" in ln)}


def app_settings(lab: Any, address: str, spec: Any) -> dict[str, Any]:
    """The deployed app's processes and threads, as keel resolved them (from the ini)."""
    ini = bl.ssh(lab, address, "cat /etc/uwsgi-apps/hello.ini").stdout
    vals = dict(re.findall(r"^(processes|threads|cheaper|cheaper-initial) = (\d+)$", ini, re.M))
    defaults = apps.APP_DEFAULTS
    return {"processes": int(vals.get("processes", 4)),
            "threads": int(vals.get("threads", defaults["threads"])),
            "cheaper": int(vals.get("cheaper", 0)),
            "cheaper_initial": int(vals.get("cheaper-initial", 0))}


def wait_ready(lab: Any, address: str, timeout: float = 60) -> None:
    """Until every mode answers /version; else fail with the unit's last log lines."""
    deadline = time.monotonic() + timeout
    for mode, (unit, port) in MODES.items():
        while True:
            rc = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "3",
                                 f"http://{address}:{port}/version"]).returncode
            if rc == 0:
                break
            if time.monotonic() > deadline:
                journal = bl.ssh(lab, address, f"journalctl -u {unit} -n 5 --no-pager",
                                 check=False).stdout
                raise RuntimeError(f"{mode} on port {port} does not answer:\n{journal}")
            time.sleep(0.5)


def host_versions(lab: Any, address: str) -> dict[str, str]:
    res = bl.ssh(lab, address, "nginx -v 2>&1; for u in /srv/hello/venvs/*/bin/uwsgi; do "
                               "echo uwsgi/$($u --version); break; done; "
                               "echo flask/$(/srv/bench-gunicorn/bin/pip show flask | "
                               "sed -n 's/^Version: //p')", check=False).stdout
    found = {w.split("/")[0]: w.split("/", 1)[1] for w in res.split()
             if w.startswith(("nginx/", "uwsgi/", "flask/"))}
    return {"nginx": found.get("nginx", "?"), "uwsgi": found.get("uwsgi", "?"),
            "gunicorn": GUNICORN.split("==")[1], "flask": found.get("flask", "?")}


def report(res: dict[str, Any], info: dict[str, str], concs: list[int], seconds: int,
           warmup: int, quick: bool, started: float, name: str = "serving") -> str:
    app = res["app"]
    capacity = app["processes"] * app["threads"]
    caps = {DEV: None, UWSGI_HTTP: capacity, NGINX_UWSGI: capacity, NGINX_GUNICORN: capacity}
    rows = []
    for r in res["runs"]:
        rows.append([r["mode"], r["endpoint"], r["conns"], f"{r['rps']:.1f}", f"{r['p50']:.1f}",
                     f"{r['p99']:.1f}", r["non2xx"], r["socket_errors"],
                     r.get("load", "?").split()[0]])
    mem_rows = []
    for mode, m in res["memory"].items():
        w = m.get("worker_rss_kb") or []
        mem_rows.append([mode, m.get("workers", "?"),
                         f"{sum(w) / len(w) / 1024:.1f}" if w else "?",
                         f"{m.get('main_rss_kb', 0) / 1024:.1f}"])
    wk_rows = [[k, v.get("active", "?"), v.get("configured", "?"), " ".join(v.get("statuses", []))]
               for k, v in res["uwsgi_workers"].items()]
    goals = []
    for mode in MODES:
        r = next((x for x in res["runs"] if x["mode"] == mode and x["endpoint"] == "io"
                  and x["conns"] == 16), None)
        if r is None:
            continue
        ideal = 16 / IO_SECONDS if caps[mode] is None else min(16, caps[mode]) / IO_SECONDS
        share = r["rps"] / ideal
        goals.append(f"- **{'met' if share >= 0.9 else 'missed'}** ({mode}): /io at "
                     f"concurrency 16: {r['rps']:.1f} req/s = {share * 100:.0f}% of the ideal "
                     f"{ideal:.0f} req/s")
    for ep in ENDPOINTS:
        for c in concs:
            cell = {x["mode"]: x for x in res["runs"] if x["endpoint"] == ep and x["conns"] == c}
            ours = cell.get(NGINX_UWSGI)
            if not ours:
                continue
            others = {m: x["p99"] for m, x in cell.items() if m != NGINX_UWSGI}
            best_other = min(others.values())
            ok = ours["p99"] <= best_other * 1.05 + 1.0
            goals.append(f"- **{'met' if ok else 'missed'}**: p99 /{ep} c={c}: nginx->uwsgi "
                         f"{ours['p99']:.1f} ms vs best other {best_other:.1f} ms ("
                         + ", ".join(f"{m} {v:.1f}" for m, v in others.items()) + ")")
    return "\n".join([
        "# Serving benchmark", "",
        f"`bench/serving.py{' --quick' if quick else ''}`: the example app on one kbench lab "
        "host after `fab bootstrap` + `fab deploy`; load from the controller with wrk "
        f"({seconds} s per run after a {warmup} s warm-up at the same concurrency, `--timeout "
        "5s`). The lab host and wrk share the controller's CPUs, so the CPU-bound numbers "
        f"are bounded by {info['nproc']} cores for everything (client included).", "",
        f"uWSGI (deployed): processes {app['processes']} x threads {app['threads']}, cheaper "
        f"{app['cheaper']} (initial {app['cheaper_initial']}). `uwsgi --http` and gunicorn "
        f"(gthread) get the same {app['processes']} x {app['threads']}; the dev server makes a "
        f"thread per request. Endpoints: `{ENDPOINTS['io']}` (IO-bound) and "
        f"`{ENDPOINTS['cpu']}` (CPU-bound). Errors = non-2xx responses + socket errors.", "",
        "## Machine and versions", "",
        bl.md_kv({**info, **{f"{k} (lab host)": v for k, v in res.get("versions", {}).items()},
                  "wall time of this benchmark": f"{(time.monotonic() - started) / 60:.1f} min",
                  "load average at end": bl.load_now()}),
        "", "## Throughput and latency", "",
        bl.md_table(["mode", "endpoint", "conns", "req/s", "p50 ms", "p99 ms", "non-2xx",
                     "socket errors", "load (1 min)"], rows), "",
        f"![io rps]({name}-io-rps.png) ![io p99]({name}-io-p99.png)", "",
        f"![cpu rps]({name}-cpu-rps.png) ![cpu p99]({name}-cpu-p99.png)", "",
        "## Memory per worker (RSS after the runs)", "",
        bl.md_table(["mode", "workers", "MiB per worker", "MiB master/main"], mem_rows), "",
        "## uWSGI workers cheaper kept (stats socket, read during each run)", "",
        bl.md_table(["endpoint@conns", "active workers", "configured", "statuses"], wk_rows), "",
        "uWSGI journal over the whole benchmark: " + ", ".join(
            f"{k} {v}" for k, v in res.get("uwsgi_events", {}).items()) + ".", "",
        "## Goals", "", *goals, "",
        f"Run: `.venv/bin/python bench/serving.py [--quick]`. Raw: `docs/bench/{name}.json`.",
        "",
    ])


if __name__ == "__main__":
    main()
