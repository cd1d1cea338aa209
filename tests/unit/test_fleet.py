"""Fleet operations without hosts: the lb and TLS renderings (judged by ``nginx -t`` where it is
installed), the rolling orchestration with a fake runner, status arithmetic and log parsing."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest

from keel import rolling
from keel.errors import HostError
from keel.inventory import HostSpec
from keel.runner import HostOutcome, Play, RunOptions
from keel.stream import remote_command
from roles import acme, apps, lb, logs, status
from roles.tls import FFDHE2048
from tests.unit.test_templates import NGINX, base_app, nginx_lines

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def needs_nginx(fn):
    for mark in (
        pytest.mark.skipif(NGINX is None, reason="nginx is not installed"),
        pytest.mark.skipif(os.geteuid() != 0, reason="nginx -t opens /var/log/nginx files"),
        pytest.mark.skipif(not Path("/var/log/nginx").is_dir(), reason="no /var/log/nginx"),
    ):
        fn = mark(fn)
    return fn


def render(name: str, **context: object) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(name).render(**context)


def nginx_t(tmp_path: Path, site: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "uwsgi_params").write_text("uwsgi_param REQUEST_METHOD $request_method;\n")
    (tmp_path / "nginx.conf").write_text(
        f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{ include {tmp_path}/site.conf; }}\n")
    return subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, check=False, timeout=60)


# ------------------------------------------------------------------ lb.conf.j2
def spec(name: str, address: str, *groups: str) -> HostSpec:
    return HostSpec(name, address, None, None, None, ("all", *groups), {})


FLEET = [spec("lb1", "10.0.0.10", "lb"), spec("web1", "10.0.0.11", "app"),
         spec("web2", "10.0.0.12", "app"), spec("db1", "10.0.0.20", "db")]


def lb_conf(tls: bool = False, folder: Path = Path("/etc/nginx/tls"), acme: bool = False,
            **overrides: object) -> str:
    """The lb site as roles/lb.py renders it (TLS files under ``folder``)."""
    v = {**lb.DEFAULTS, "lb_backends": lb.backends(FLEET), **overrides}
    return render("lb.conf.j2", **v, backends=v["lb_backends"], down=set(v["lb_down"]), tls=tls,
                  acme=acme, acme_webroot=str(folder / "acme"),
                  tls_cert_path=f"{folder}/lb.crt", tls_key_path=f"{folder}/lb.key",
                  tls_dhparam=f"{folder}/ffdhe2048.pem", tls_hsts=v["lb_tls_hsts"])


def test_backends_are_the_app_group_by_address() -> None:
    assert lb.backends(FLEET) == [{"name": "web1", "address": "10.0.0.11"},
                                  {"name": "web2", "address": "10.0.0.12"}]
    assert [h.name for h in FLEET if lb.is_balancer(h)] == ["lb1"]


def test_lb_upstream_speaks_http_to_each_app_host() -> None:
    lines = nginx_lines(lb_conf())
    assert "server 10.0.0.11:80 max_fails=2 fail_timeout=10s;" in lines
    assert "server 10.0.0.12:80 max_fails=2 fail_timeout=10s;" in lines
    assert "keepalive 16;" in lines
    assert "proxy_pass http://app_hosts;" in lines
    assert "proxy_http_version 1.1;" in lines
    assert 'proxy_set_header Connection "";' in lines
    assert "proxy_set_header Host $host;" in lines
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in lines
    assert not any("non_idempotent" in ln or "uwsgi_pass" in ln for ln in lines)


def test_lb_renders_drained_hosts_down() -> None:
    lines = nginx_lines(lb_conf(lb_down=["web2"]))
    assert "server 10.0.0.11:80 max_fails=2 fail_timeout=10s;" in lines
    assert "server 10.0.0.12:80 max_fails=2 fail_timeout=10s down;" in lines


def test_lb_fixed_backend_host() -> None:
    assert "proxy_set_header Host hello.example.org;" in nginx_lines(
        lb_conf(lb_backend_host="hello.example.org"))


@needs_nginx
def test_nginx_accepts_the_lb(tmp_path: Path) -> None:
    done = nginx_t(tmp_path, lb_conf(lb_down=["web1"]))
    assert done.returncode == 0, done.stderr


def test_lb_tls_redirects_http_and_proxies_https_in_http() -> None:
    plain = lb_conf()
    assert "ssl" not in plain
    text = lb_conf(tls=True, lb_tls_hsts=600)
    lines = nginx_lines(text)
    http, https = text.split("\nserver {")[1:]
    assert "listen 80 default_server;" in http and "return 301 https://$host$request_uri;" in http
    assert "proxy_pass" not in http
    assert "listen 443 ssl default_server;" in https
    for line in ("ssl_protocols TLSv1.2 TLSv1.3;", "ssl_session_tickets off;",
                 "ssl_certificate /etc/nginx/tls/lb.crt;", "ssl_certificate_key /etc/nginx/tls/lb.key;",
                 "ssl_dhparam /etc/nginx/tls/ffdhe2048.pem;", "proxy_pass http://app_hosts;",
                 'add_header Strict-Transport-Security "max-age=600" always;',
                 "proxy_set_header X-Forwarded-Proto $scheme;"):
        assert line in lines, line
    # The same profile as the app hosts' TLS sites.
    site = nginx_lines(render("nginx-site.conf.j2", app={**base_app(), "tls": True, "tls_listen": 443,
                              "tls_hsts": 0, "tls_cert_path": "c", "tls_key_path": "k",
                              "tls_dhparam": "d"}, nginx_group="www-data"))
    profile = [ln for ln in site if ln.split()[0] in ("ssl_protocols", "ssl_ciphers",
                                                      "ssl_prefer_server_ciphers", "ssl_session_tickets")]
    assert len(profile) == 4 and all(ln in lines for ln in profile)
    assert "return 301 https://$host:8443$request_uri;" in nginx_lines(
        lb_conf(tls=True, lb_tls_listen=8443))


@needs_nginx
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_nginx_accepts_the_tls_lb(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=lb.example.test",
                    "-keyout", str(tmp_path / "lb.key"), "-out", str(tmp_path / "lb.crt")],
                   check=True, capture_output=True)
    (tmp_path / "ffdhe2048.pem").write_text(FFDHE2048)
    done = nginx_t(tmp_path, lb_conf(tls=True, folder=tmp_path))
    assert done.returncode == 0, done.stderr


def test_lb_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    base = {**lb.DEFAULTS, "project_dir": str(tmp_path)}
    host = SimpleNamespace(name="lb1", vars={**base, "lb_tls_cert": "cert.pem", "lb_tls_key": "k.pem"})
    with pytest.raises(HostError) as err:
        lb.tls_files(host)  # type: ignore[arg-type]
    assert str(err.value) == f"lb1: lb: lb_tls_key {tmp_path}/k.pem does not exist"
    host.vars["lb_tls_key"] = ""
    with pytest.raises(HostError, match="lb_tls_key is not set"):
        lb.tls_files(host)  # type: ignore[arg-type]
    host.vars["lb_tls_cert"] = ""
    assert lb.tls_files(host) is None  # type: ignore[arg-type]


def test_lb_acme_serves_the_challenge_itself_before_and_after_its_certificate() -> None:
    before = lb_conf(acme=True)
    assert "ssl" not in before
    challenge = before[before.index("location ^~ /.well-known/acme-challenge/"):]
    challenge = challenge[:challenge.index("}")]
    assert "root /etc/nginx/tls/acme;" in challenge and "proxy_pass" not in challenge
    after = lb_conf(tls=True, acme=True)
    http, https = after.split("\nserver {")[1:]
    assert "location ^~ /.well-known/acme-challenge/ {" in http and "proxy_pass" not in http
    # The redirect is in "location /": a return at server level would answer the challenge too.
    assert "\n    return 301" not in http and "        return 301 https://$host$request_uri;" in http
    assert "acme-challenge" not in https and "proxy_pass http://app_hosts;" in https


@needs_nginx
def test_nginx_accepts_the_acme_lb(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=lb.example.test",
                    "-keyout", str(tmp_path / "lb.key"), "-out", str(tmp_path / "lb.crt")],
                   check=True, capture_output=True)
    (tmp_path / "ffdhe2048.pem").write_text(FFDHE2048)
    for https in (False, True):
        done = nginx_t(tmp_path, lb_conf(tls=https, folder=tmp_path, acme=True))
        assert done.returncode == 0, done.stderr


ACME_LB = {"lb_tls": "acme", "lb_acme_email": "ops@example.org", "lb_server_name": "example.org"}


@pytest.mark.parametrize(("settings", "error"), [
    ({"lb_acme_email": "ops"}, "lb: lb_acme_email 'ops' is not an email address "
                               "(lb_tls: acme needs one)"),
    ({"lb_server_name": "_"}, "lb: lb_server_name '_' cannot get an ACME certificate (lb_tls: acme "
                              "needs DNS names, not '_', an IP address or a wildcard)"),
    ({"lb_server_name": "10.0.0.10"}, "lb: lb_server_name '10.0.0.10' cannot get an ACME certificate"),
    ({"lb_tls_cert": "cert.pem"}, "lb: lb_tls: acme and lb_tls_cert are both set (use one: ACME "
                                  "gets the certificate itself)"),
    ({"lb_tls": "letsencrypt"}, "lb: lb_tls must be 'acme' (or unset, with lb_tls_cert and "
                                "lb_tls_key for certificate files), not 'letsencrypt'"),
    ({"lb_acme_directory": "http://ca.example.org/dir"},
     "lb: lb_acme_directory 'http://ca.example.org/dir' is not an https:// URL"),
])
def test_bad_lb_acme_settings_are_one_line_naming_the_lb(tmp_path: Path, settings: dict,
                                                          error: str) -> None:
    host = SimpleNamespace(name="lb1", vars={**lb.DEFAULTS, "project_dir": str(tmp_path),
                                             **ACME_LB, **settings})
    with pytest.raises(HostError) as err:
        lb.tls_files(host)  # type: ignore[arg-type]
        lb.check_acme(host)  # type: ignore[arg-type]
    assert str(err.value).startswith(f"lb1: {error}"), str(err.value)
    assert "\n" not in str(err.value)


def test_acme_lb_asks_certbot_for_its_server_names() -> None:
    host = SimpleNamespace(name="lb1", vars={**lb.DEFAULTS, **ACME_LB,
                                             "lb_server_name": "example.org www.example.org"})
    assert lb.tls_files(host) is None  # type: ignore[arg-type]
    lb.check_acme(host)  # type: ignore[arg-type]
    cert = lb.certificate(host)  # type: ignore[arg-type]
    assert cert["acme_directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    script = acme.certbot(host, cert)  # type: ignore[arg-type]
    assert "--cert-name lb -d example.org -d www.example.org" in script
    assert "http://127.0.0.1:80/.well-known/acme-challenge/keel-probe-lb" in script
    assert lb.expectations(ACME_LB)["lb_tls_key_path"] == "/etc/letsencrypt/live/lb/privkey.pem"


# ------------------------------------------------------------------ TLS site
@pytest.fixture
def tls_app(tmp_path: Path) -> dict:
    app = base_app()
    app.update(tls=True, tls_listen=443, tls_hsts=0, tls_cert_path=str(tmp_path / "c.pem"),
               tls_key_path=str(tmp_path / "k.pem"), tls_dhparam=str(tmp_path / "dh.pem"))
    return app


def test_tls_site_redirects_http_and_serves_https(tls_app: dict) -> None:
    text = render("nginx-site.conf.j2", app=tls_app, nginx_group="www-data")
    lines = nginx_lines(text)
    assert "listen 80 default_server;" in lines
    assert "return 301 https://$host$request_uri;" in lines
    assert "listen 443 ssl default_server;" in lines
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in lines
    assert "ssl_session_tickets off;" in lines
    assert "ssl_prefer_server_ciphers off;" in lines
    ciphers = next(ln for ln in lines if ln.startswith("ssl_ciphers ")).split()[1].rstrip(";")
    assert ciphers.split(":")[:2] == ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]
    assert all("GCM" in c or "CHACHA20" in c for c in ciphers.split(":"))
    assert "Strict-Transport-Security" not in text
    # Everything after the redirect block is the HTTPS server: the app is not on plain HTTP.
    assert text.index("uwsgi_pass") > text.index("listen 443 ssl")


def test_tls_site_hsts_and_other_port(tls_app: dict) -> None:
    tls_app.update(tls_hsts=31536000, tls_listen=8443)
    lines = nginx_lines(render("nginx-site.conf.j2", app=tls_app, nginx_group="www-data"))
    assert "return 301 https://$host:8443$request_uri;" in lines
    # Once for the server, once again in the static location (its add_header hides the server's).
    assert lines.count('add_header Strict-Transport-Security "max-age=31536000" always;') == 2


def test_site_without_tls_is_unchanged_by_the_tls_option() -> None:
    app = base_app()
    plain = render("nginx-site.conf.j2", app=app, nginx_group="www-data")
    app["tls"] = False
    assert render("nginx-site.conf.j2", app=app, nginx_group="www-data") == plain
    assert "ssl" not in plain


@needs_nginx
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_nginx_accepts_the_tls_site(tls_app: dict, tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=hello.example.test",
                    "-keyout", tls_app["tls_key_path"], "-out", tls_app["tls_cert_path"]],
                   check=True, capture_output=True)
    Path(tls_app["tls_dhparam"]).write_text(FFDHE2048)
    done = nginx_t(tmp_path, render("nginx-site.conf.j2", app=tls_app, nginx_group="www-data"))
    assert done.returncode == 0, done.stderr


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    host = SimpleNamespace(name="web1")
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    app = {**apps.APP_DEFAULTS, "name": "hello", "tls_cert": str(cert), "tls_key": "missing.pem"}
    with pytest.raises(HostError) as err:
        apps._resolve_tls(host, app, tmp_path)  # type: ignore[arg-type]
    assert str(err.value) == f"web1: app hello: tls_key {tmp_path}/missing.pem does not exist"
    app = {**apps.APP_DEFAULTS, "name": "hello", "tls_cert": str(cert)}
    with pytest.raises(HostError, match="tls_key is not set"):
        apps._resolve_tls(host, app, tmp_path)  # type: ignore[arg-type]
    app = {**apps.APP_DEFAULTS, "name": "hello"}
    apps._resolve_tls(host, app, tmp_path)  # type: ignore[arg-type]
    assert app["tls"] is False


# ------------------------------------------------------------------ rolling
class FakeRunner:
    """Stands in for run_play: records each call; hosts in ``fail`` fail their real run."""

    def __init__(self, changing: set[str], fail: set[str] = frozenset(), lb_fails: bool = False):
        self.changing, self.fail, self.lb_fails = changing, fail, lb_fails
        self.calls: list[tuple[str, list[str], dict]] = []

    def __call__(self, hosts, play, opts, reporter=None, body=None):
        names = [h.name for h in hosts]
        if play.name == "lb":
            self.calls.append(("lb", names, {k: v for k, v in opts.extra_vars.items()
                                             if k.startswith("lb_down")}))
            return [HostOutcome(n, failed=self.lb_fails) for n in names]
        self.calls.append(("check" if opts.check else "run", names, {}))
        if opts.check:
            return [HostOutcome(n, results=[_changed()] if n in self.changing else []) for n in names]
        return [HostOutcome(n, failed=n in self.fail) for n in names]


def _changed():
    from keel.operation import Result

    return Result("h", "file", "/x", True, "content changed")


def roll(runner: FakeRunner, serial: int = 1, max_fail: int = 0) -> list[HostOutcome]:
    web = [spec(f"web{i}", f"10.0.0.1{i}", "app") for i in (1, 2, 3)]
    lb_play = Play("lb", [])
    rotation = rolling.Rotation([FLEET[0]], lb_play, lb_play, RunOptions(), var="lb_down")
    reporter = rolling._quiet()
    old = rolling.run_play
    rolling.run_play = runner  # type: ignore[assignment]
    try:
        return rolling.run_rolling(web, Play("deploy", []), RunOptions(serial=serial, max_fail=max_fail),
                                   rotation, reporter)
    finally:
        rolling.run_play = old  # type: ignore[assignment]


def test_rolling_drains_each_changing_batch_then_returns_it() -> None:
    runner = FakeRunner(changing={"web1", "web3"})
    roll(runner)
    assert runner.calls == [
        ("check", ["web1"], {}), ("lb", ["lb1"], {"lb_down": ["web1"], "lb_down_returning": []}),
        ("run", ["web1"], {}), ("lb", ["lb1"], {"lb_down": [], "lb_down_returning": ["web1"]}),
        ("check", ["web2"], {}), ("run", ["web2"], {}),  # nothing to do: never taken out
        ("check", ["web3"], {}), ("lb", ["lb1"], {"lb_down": ["web3"], "lb_down_returning": []}),
        ("run", ["web3"], {}), ("lb", ["lb1"], {"lb_down": [], "lb_down_returning": ["web3"]}),
    ]


def test_rolling_keeps_a_failed_host_out_and_stops() -> None:
    runner = FakeRunner(changing={"web1", "web2", "web3"}, fail={"web1"})
    outcomes = roll(runner, serial=2)
    assert runner.calls[1:4] == [
        ("lb", ["lb1"], {"lb_down": ["web1", "web2"], "lb_down_returning": []}),
        ("run", ["web1", "web2"], {}),
        ("lb", ["lb1"], {"lb_down": ["web1"], "lb_down_returning": ["web2"]}),
    ]
    assert len(runner.calls) == 4
    web3 = next(o for o in outcomes if o.name == "web3")
    assert web3.skipped and web3.error == "skipped: an earlier batch failed"


def test_rolling_stops_when_the_lb_cannot_drain() -> None:
    runner = FakeRunner(changing={"web1", "web2", "web3"}, lb_fails=True)
    outcomes = rolling.merge(roll(runner))
    assert [c[0] for c in runner.calls] == ["check", "lb", "lb"]  # drain failed, undo, no deploy
    assert {o.name: o.skipped for o in outcomes if o.name.startswith("web")} == {
        "web1": True, "web2": True, "web3": True}
    assert next(o for o in outcomes if o.name == "lb1").failed


def test_merge_sums_a_host_across_plays() -> None:
    merged = rolling.merge([HostOutcome("lb1", round_trips=3), HostOutcome("web1"),
                            HostOutcome("lb1", round_trips=4, failed=True, error="lb1: x")])
    assert [(o.name, o.round_trips, o.failed) for o in merged] == [("lb1", 7, True), ("web1", 0, False)]


# ------------------------------------------------------------------ status, logs, streams
def worker(pid: int, status_: str, requests: int, **kw: int) -> dict:
    return {"pid": pid, "status": status_, "requests": requests, "exceptions": kw.get("exc", 0),
            "respawn_count": kw.get("respawns", 1), "avg_rt": kw.get("avg_rt", 0),
            "rss": kw.get("rss", 0)}


def test_status_sums_workers_and_counts_cheaper() -> None:
    first = {"t": 10.0, "listen_queue": 0, "workers": [
        worker(11, "idle", 100, avg_rt=1000), worker(12, "busy", 300, avg_rt=3000),
        worker(0, "cheap", 50)]}
    second = {"t": 12.0, "listen_queue": 2, "workers": [
        worker(11, "idle", 100, avg_rt=1000, rss=10 * 2**20),
        worker(12, "busy", 340, avg_rt=3000, rss=20 * 2**20, exc=2, respawns=3),
        worker(0, "cheap", 50)]}
    a = status.summarize("web1", "hello", {"state": "active", "release": "abc",
                                           "samples": [first, second]}, "active")
    assert (a.workers, a.processes, a.busy, a.idle) == (2, 3, 1, 1)
    assert (a.requests, a.rps, a.rss_mib, a.exceptions, a.respawns) == (490, 20.0, 30.0, 2, 5)
    assert a.avg_ms == round((1000 * 100 + 3000 * 340) / 440 / 1000, 1)
    # One sample: RPS from the previous refresh's sample, or none.
    one = {"state": "active", "release": "abc", "samples": [second]}
    assert status.summarize("web1", "hello", one, "active").rps is None
    assert status.summarize("web1", "hello", one, "active", previous=first).rps == 20.0


def test_status_reports_an_unreadable_stats_socket() -> None:
    a = status.summarize("web1", "hello", {"state": "inactive", "release": "", "samples": [
        {"error": "stats socket /run/hello/stats.sock: No such file or directory"}]}, "active")
    assert a.error.endswith("No such file or directory") and a.workers is None


def test_logs_units_per_host() -> None:
    web = HostSpec("web1", "10.0.0.11", None, None, None, ("all", "app"),
                   {"apps": [{"name": "hello"}, {"name": "second"}]})
    assert logs.units(web) == ["hello.service", "second.service", "nginx.service"]
    assert logs.units(web, "second") == ["second.service"]
    assert logs.units(FLEET[0]) == ["nginx.service"]
    assert logs.units(FLEET[0], "hello") == []


def test_logs_command_and_parse() -> None:
    assert logs.command(["hello.service"], lines=20) == (
        "journalctl --no-pager --output=json --unit=hello.service --lines=20")
    entry = logs.parse('{"__REALTIME_TIMESTAMP": "1", "_COMM": "nginx", "MESSAGE": [104, 105]}')
    assert (entry.ident, entry.message) == ("nginx", "hi")
    line = logs.render("web1", 6, logs.parse("sudo: a password is required")).plain
    assert line == "web1    sudo: a password is required"


def test_stream_command_is_guarded_by_a_watchdog() -> None:
    assert remote_command("journalctl -f", "deploy").startswith("sudo -n -H -- python3 -c ")
    assert remote_command("journalctl -f", "deploy", "pw").startswith("sudo -S -p '' -H -- ")
    assert remote_command("journalctl -f", "root").endswith(" 'journalctl -f'")
