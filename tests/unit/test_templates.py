"""Rendering of templates/ with a representative app, as the roles render them
(StrictUndefined, trim_blocks, lstrip_blocks), and what the rendered files say.

Where the real tools are on the machine, they judge the output too:
``systemd-analyze security --offline=yes`` (exposure <= 1.5),
``systemd-analyze verify``, systemd's own environment-file parser, and
``nginx -t``. Those tests skip when the tool is missing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
TEMPLATES = ["uwsgi.ini.j2", "uwsgi.service.j2", "uwsgi.socket.j2", "nginx-site.conf.j2",
             "app.env.j2"]
MANAGED = "Managed by the provisioning toolkit"
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
ENV_GENERATOR = Path(
    "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
)
NGINX = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin:/sbin"))


def base_app() -> dict:
    return {
        "name": "hello",
        "user": "hello",
        "group": "hello",
        "root": "/srv/hello",
        "code_dir": "/srv/hello/current",
        "venv": "/srv/hello/venv",
        "module": "hello:create_app()",
        "ini_path": "/etc/uwsgi-apps/hello.ini",
        "env_file": "/srv/hello/shared/env",
        "env": {"APP_SECRET_KEY": "s3cret", "APP_NAME": "hello"},
        "state_dir": "/srv/hello/shared/state",
        "socket": "/run/hello/uwsgi.sock",
        "stats_socket": "/run/hello/stats.sock",
        "processes": 4,
        "threads": 2,
        "cheaper": 1,
        "cheaper_initial": 2,
        "cheaper_step": 1,
        "harakiri": 30,
        "max_requests": 5000,
        "log_slow_ms": 1000,
        "buffer_size": 32768,
        "server_name": "hello.example.test",
        "listen": 80,
        "default_server": True,
        "client_max_body_size": "10m",
        "static_url": "/static/",
        "static_dir": "/srv/hello/current/static",
        "release": "20250101-abc123",
        "python_path": [""],
        "uwsgi_options": {},
        "systemd_options": {},
    }


@pytest.fixture
def app() -> dict:
    return base_app()


def render(name: str, app: dict, nginx_group: str = "www-data") -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(name).render(app=app, nginx_group=nginx_group)


# Small readers for the rendered formats.


def ini_pairs(text: str) -> list[tuple[str, str]]:
    """(key, value) pairs of the [uwsgi] section, in order, repeats kept."""
    pairs, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        assert section == "uwsgi", f"option outside [uwsgi]: {raw!r}"
        key, _, value = line.partition("=")
        pairs.append((key.strip(), value.strip()))
    return pairs


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def nginx_lines(text: str) -> list[str]:
    return [
        line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()
    ]


def parse_env_file(text: str) -> dict[str, str]:
    """Read what app.env.j2 writes the way systemd's env-file parser does:
    KEY="value", where backslash escapes one of  " \\ ` $  and a raw newline
    inside the quotes belongs to the value."""
    env: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\n":
            i += 1
            continue
        if text[i] in "#;":
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        eq = text.index("=", i)
        key = text[i:eq].strip()
        i = eq + 1
        assert text[i] == '"', f"value of {key} is not double-quoted"
        i += 1
        value = []
        while True:
            c = text[i]
            if c == "\\":
                nxt = text[i + 1]
                if nxt in '"\\`$':
                    value.append(nxt)
                elif nxt != "\n":  # backslash-newline would join lines
                    value.append(c + nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                value.append(c)
                i += 1
        end = text.find("\n", i)
        assert text[i : n if end == -1 else end].strip() == "", f"text after {key}'s value"
        i = n if end == -1 else end + 1
        env[key] = "".join(value)
    return env


# All templates


@pytest.mark.parametrize("name", TEMPLATES)
def test_header_says_managed(app, name):
    first = render(name, app).splitlines()[0]
    assert first.startswith("#") and MANAGED in first


@pytest.mark.parametrize("name", TEMPLATES)
def test_missing_variable_fails_loudly(name):
    with pytest.raises(jinja2.UndefinedError):
        render(name, {"name": "hello"})


# uwsgi.ini.j2


def test_uwsgi_ini_directives(app):
    text = render("uwsgi.ini.j2", app)
    pairs = ini_pairs(text)
    opts = dict(pairs)
    for flag in [
        "strict",
        "master",
        "need-app",
        "lazy-apps",
        "single-interpreter",
        "die-on-term",
        "enable-threads",
        "memory-report",
        "disable-logging",
        "log-5xx",
    ]:
        assert opts.get(flag) == "true", flag
    assert opts["processes"] == "4"
    assert opts["threads"] == "2"
    # thunder-lock with threads hangs every graceful worker exit (chain reloads).
    assert "thunder-lock" not in opts
    # systemd starts it as the app user (User= in the unit): no identity change here.
    assert "uid" not in opts and "gid" not in opts
    # The socket is systemd's (uwsgi.socket.j2): uWSGI must neither re-own nor remove it.
    assert opts["socket"] == "/run/hello/uwsgi.sock"
    assert opts["vacuum"] == "false"
    assert "chmod-socket" not in opts and "chown-socket" not in opts
    assert "http-socket" not in opts
    assert opts["stats"] == "/run/hello/stats.sock"
    assert opts["harakiri"] == "30"
    assert opts["log-slow"] == "1000"
    assert opts["worker-reload-mercy"] == "30"
    assert opts["max-requests"] == "5000"
    assert opts["buffer-size"] == "32768"
    assert opts["post-buffering"] == "65536"  # the body read whole: no 502 for an early answer
    assert opts["module"] == "hello:create_app()"
    # Master in /, each worker chdirs into current after fork (chain reloads load
    # the new release); the venv is the release's own, through current.
    assert opts["virtualenv"] == "/srv/hello/current/.venv"
    assert opts["chdir"] == "/"
    assert opts["hook-post-fork"] == "chdir:/srv/hello/current"
    assert opts["pythonpath"] == "/srv/hello/current"
    assert opts["master-fifo"] == "/run/hello/master.fifo"
    assert opts["procname-prefix-spaced"] == "hello"
    # SIGTERM = graceful shutdown; nothing runs as root.
    assert opts["hook-master-start"] == "unix_signal:15 gracefully_kill_them_all"
    assert "hook-as-root" not in opts
    envs = [value for key, value in pairs if key == "env"]
    assert not [e for e in envs if e.startswith("APP_RELEASE=")]  # read from current/RELEASE
    assert "APP_STATE_DIR=/srv/hello/shared/state" in envs


def test_uwsgi_ini_src_layout(app):
    app["python_path"] = ["", "src"]
    paths = [v for k, v in ini_pairs(render("uwsgi.ini.j2", app)) if k == "pythonpath"]
    assert paths == ["/srv/hello/current", "/srv/hello/current/src"]


def test_uwsgi_ini_cheaper(app):
    opts = dict(ini_pairs(render("uwsgi.ini.j2", app)))
    assert opts["cheaper-algo"] == "spare"
    assert (opts["cheaper"], opts["cheaper-initial"], opts["cheaper-step"]) == ("1", "2", "1")


@pytest.mark.parametrize(("processes", "cheaper"), [(1, 1), (4, 0), (4, 4)])
def test_uwsgi_ini_leaves_cheaper_out_when_it_cannot_work(app, processes, cheaper):
    app.update(processes=processes, cheaper=cheaper)
    keys = {key for key, _ in ini_pairs(render("uwsgi.ini.j2", app))}
    assert not keys & {"cheaper", "cheaper-algo", "cheaper-initial", "cheaper-step"}


def test_uwsgi_ini_defaults_to_a_fixed_pool(app):
    from roles.apps import APP_DEFAULTS

    app.update({k: APP_DEFAULTS[k] for k in ("cheaper", "cheaper_initial", "cheaper_step")})
    opts = dict(ini_pairs(render("uwsgi.ini.j2", app)))
    assert opts["processes"] == "4"
    assert not opts.keys() & {"cheaper", "cheaper-algo", "cheaper-initial", "cheaper-step"}


@pytest.mark.parametrize(("initial", "expected"), [(0, "1"), (9, "4")])
def test_uwsgi_ini_clamps_cheaper_initial(app, initial, expected):
    app["cheaper_initial"] = initial
    assert dict(ini_pairs(render("uwsgi.ini.j2", app)))["cheaper-initial"] == expected


def test_uwsgi_ini_logs_to_journald_only(app):
    keys = {key for key, _ in ini_pairs(render("uwsgi.ini.j2", app))}
    assert not keys & {"logto", "logto2", "daemonize", "daemonize2", "logger", "req-logger"}


def test_uwsgi_ini_has_no_inline_comments(app):
    # uWSGI would take "  # note" as part of the value.
    for key, value in ini_pairs(render("uwsgi.ini.j2", app)):
        assert " #" not in value and " ;" not in value, key


def test_uwsgi_ini_wants_stats_socket_beside_main_socket(app):
    app["stats_socket"] = "/tmp/stats.sock"
    with pytest.raises(jinja2.UndefinedError, match="same_directory"):
        render("uwsgi.ini.j2", app)


def test_uwsgi_ini_plain_callable_module(app):
    app["module"] = "wsgi:app"
    assert dict(ini_pairs(render("uwsgi.ini.j2", app)))["module"] == "wsgi:app"


# uwsgi.service.j2


def test_unit_service_section(app):
    sections = unit_sections(render("uwsgi.service.j2", app))
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == (
        "/srv/hello/current/.venv/bin/uwsgi --ini /etc/uwsgi-apps/hello.ini")
    assert service["ExecReload"] == "+/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > app["harakiri"]
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/srv/hello/shared/env"
    # The run dir is made before each start, not a RuntimeDirectory= (which
    # systemd would make hello:hello, closed to nginx, and remove at stop).
    assert "RuntimeDirectory" not in service
    assert service["ExecStartPre"] == "+/usr/bin/install -d -o hello -g www-data -m 0750 /run/hello"
    assert service["ReadWritePaths"] == "/srv/hello/shared/state -/run/hello"
    # Never root: systemd starts uWSGI as the app user.
    assert (service["User"], service["Group"]) == ("hello", "hello")
    assert "DynamicUser" not in service
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"


def test_unit_hardening(app):
    service = unit_sections(render("uwsgi.service.j2", app))["Service"]
    settings = dict(service)
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["PrivateUsers"] == "yes"
    assert set(settings["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert settings.get(key) == value, key
    filters = [value for key, value in service if key == "SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert set(filters[1].lstrip("~").split()) == {"@privileged", "@resources"}


def test_unit_wants_socket_directly_under_run(app):
    app.update(socket="/var/run/x/y/uwsgi.sock", stats_socket="/var/run/x/y/stats.sock")
    with pytest.raises(jinja2.UndefinedError, match="directly_under_run"):
        render("uwsgi.service.j2", app)


def test_ini_and_unit_agree_on_the_run_directory(app):
    app.update(socket="/run/other/uwsgi.sock", stats_socket="/run/other/stats.sock")
    service = dict(unit_sections(render("uwsgi.service.j2", app))["Service"])
    opts = dict(ini_pairs(render("uwsgi.ini.j2", app)))
    assert service["ExecStartPre"].endswith(" /run/other")
    assert opts["master-fifo"] == "/run/other/master.fifo"


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        check=False,
        timeout=60,
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_exposure_score(app, tmp_path):
    unit = tmp_path / "hello.service"
    unit.write_text(render("uwsgi.service.j2", app))
    done = analyze("security", "--offline=yes", str(unit))
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    match = re.search(r"Overall exposure level for hello\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{done.stdout}"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_verifies(app, tmp_path):
    # verify insists that ExecStart's binary exists and is executable.
    uwsgi = tmp_path / "current" / ".venv" / "bin" / "uwsgi"
    uwsgi.parent.mkdir(parents=True)
    uwsgi.write_text("#!/bin/sh\nexit 0\n")
    uwsgi.chmod(0o755)
    app["code_dir"] = str(tmp_path / "current")
    unit = tmp_path / "hello.service"
    unit.write_text(render("uwsgi.service.j2", app))
    (tmp_path / "hello.socket").write_text(render("uwsgi.socket.j2", app))
    done = analyze("verify", "--man=no", str(unit), str(tmp_path / "hello.socket"))
    about_unit = [
        line for line in (done.stdout + done.stderr).splitlines() if "hello.service" in line
    ]
    assert about_unit == [], "\n".join(about_unit)


# nginx-site.conf.j2


def test_nginx_site(app):
    lines = nginx_lines(render("nginx-site.conf.j2", app))
    assert "listen 80 default_server;" in lines
    assert "server_name hello.example.test;" in lines
    assert "server_tokens off;" in lines
    assert "client_max_body_size 10m;" in lines
    assert "access_log /var/log/nginx/access.log;" in lines
    assert "error_log /var/log/nginx/error.log;" in lines
    assert "location /static/ {" in lines
    assert "alias /srv/hello/current/static/;" in lines
    assert any(line.startswith("add_header Cache-Control") for line in lines)
    assert "location / {" in lines
    assert "include uwsgi_params;" in lines
    assert "uwsgi_pass unix:/run/hello/uwsgi.sock;" in lines


def test_nginx_waits_longer_than_harakiri(app):
    text = render("nginx-site.conf.j2", app)
    read = int(re.search(r"uwsgi_read_timeout (\d+)s;", text).group(1))
    send = int(re.search(r"uwsgi_send_timeout (\d+)s;", text).group(1))
    assert app["harakiri"] < read <= app["harakiri"] + 10
    assert send == read


def test_nginx_not_default_server(app):
    app.update(default_server=False, listen=8080)
    lines = nginx_lines(render("nginx-site.conf.j2", app))
    assert "listen 8080;" in lines
    assert not any("default_server" in line for line in lines)


def test_nginx_without_static_dir(app):
    app["static_dir"] = ""
    text = render("nginx-site.conf.j2", app)
    assert "alias" not in text
    assert "location /static/" not in text


def test_nginx_static_paths_keep_their_trailing_slashes(app):
    # "location /static" with "alias .../static/" would let /static../ escape.
    app.update(static_url="/assets", static_dir="/srv/hello/current/static/")
    lines = nginx_lines(render("nginx-site.conf.j2", app))
    assert "location /assets/ {" in lines
    assert "alias /srv/hello/current/static/;" in lines


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="nginx -t opens /var/log/nginx files")
@pytest.mark.skipif(not Path("/var/log/nginx").is_dir(), reason="no /var/log/nginx")
def test_nginx_accepts_the_site(app, tmp_path):
    site = tmp_path / "site.conf"
    site.write_text(render("nginx-site.conf.j2", app))
    params = Path("/etc/nginx/uwsgi_params")
    (tmp_path / "uwsgi_params").write_text(
        params.read_text() if params.exists() else "uwsgi_param REQUEST_METHOD $request_method;\n"
    )
    (tmp_path / "nginx.conf").write_text(
        f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};\n"
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ include {site}; }}\n"
    )
    done = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# app.env.j2

TRICKY_VALUES = {
    "A_PLAIN": "hello world",
    "B_QUOTES": "say \"hi\" and 'bye'",
    "C_BACKSLASH": "a\\b\\\\c\\",
    "D_BACKTICK": "`id`",
    "E_DOLLAR": "$HOME ${PATH} $$",
    "F_HASH": "x # not a comment ; nor this",
    "G_SPACES": "  padded  ",
    "H_NEWLINE": "line1\nline2",
    "I_EQUALS": "a=b=c",
    "J_UNICODE": "café",
}


def test_env_file_round_trips_values(app):
    app["env"] = dict(TRICKY_VALUES, K_INT=42)
    text = render("app.env.j2", app)
    assert parse_env_file(text) == dict(TRICKY_VALUES, K_INT="42")


def test_env_file_is_sorted(app):
    app["env"] = {"ZED": "1", "ALPHA": "2"}
    lines = render("app.env.j2", app).splitlines()
    keys = [line.split("=")[0] for line in lines if line and not line.startswith("#")]
    assert keys == ["ALPHA", "ZED"]


@pytest.mark.parametrize("key", ["MY-VAR", "1ABC", "HAS SPACE", ""])
def test_env_file_rejects_bad_keys(app, key):
    app["env"] = {key: "x"}
    with pytest.raises(jinja2.UndefinedError, match="valid_environment_variable_names"):
        render("app.env.j2", app)


@pytest.mark.skipif(
    not ENV_GENERATOR.exists(), reason="systemd's environment.d generator is absent"
)
def test_env_file_read_by_systemds_own_parser(app, tmp_path):
    """environment.d files use systemd's env-file parser, as EnvironmentFile=
    does; its generator prints what it read. It also expands $VARs and
    C-escapes newlines, so those two values are left out here."""
    values = {k: v for k, v in TRICKY_VALUES.items() if "$" not in v and "\n" not in v}
    app["env"] = values
    conf = tmp_path / "environment.d"
    conf.mkdir()
    (conf / "50-app.conf").write_text(render("app.env.j2", app))
    done = subprocess.run(
        [str(ENV_GENERATOR)],
        env={"XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "ignoring" not in done.stderr, done.stderr
    seen = {}
    for line in done.stdout.splitlines():
        # It prints KEY=value, or KEY="value" with " \ ` $ backslash-escaped.
        key, _, value = line.partition("=")
        if value.startswith('"') and value.endswith('"'):
            value = re.sub(r'\\(["\\`$])', r"\1", value[1:-1])
        seen[key] = value
    assert {key: seen.get(key) for key in values} == values


# uwsgi.socket.j2 and the canary


def test_socket_unit_is_the_ini_socket(app):
    sections = unit_sections(render("uwsgi.socket.j2", app))
    sock = dict(sections["Socket"])
    opts = dict(ini_pairs(render("uwsgi.ini.j2", app)))
    assert sock["ListenStream"] == opts["socket"] == app["socket"]
    assert (sock["SocketUser"], sock["SocketGroup"], sock["SocketMode"]) == (
        "hello", "www-data", "0660")
    assert sock["Backlog"] == opts["listen"]
    assert dict(sections["Install"])["WantedBy"] == "sockets.target"


def test_unit_requires_its_socket(app):
    pairs = unit_sections(render("uwsgi.service.j2", app))["Unit"]
    assert ("Requires", "hello.socket") in pairs
    assert ("After", "hello.socket") in pairs


def test_canary_renders_its_own_instance(app):
    from roles.uwsgi import canary_app

    app["release_dir"] = "/srv/hello/releases/abc"
    c = canary_app(app, "/srv/hello/shared/env.candidate")
    opts = dict(ini_pairs(render("uwsgi.ini.j2", c)))
    assert opts["http-socket"] == "/run/hello-canary/http.sock"
    assert "socket" not in opts  # never the live socket
    assert opts["stats"] == "/run/hello-canary/stats.sock"
    assert opts["master-fifo"] == "/run/hello-canary/master.fifo"
    assert opts["virtualenv"] == "/srv/hello/releases/abc/.venv"
    assert opts["processes"] == "1"
    sections = unit_sections(render("uwsgi.service.j2", c))
    assert "Requires" not in dict(sections["Unit"])
    service = dict(sections["Service"])
    assert service["EnvironmentFile"] == "/srv/hello/shared/env.candidate"
    assert service["ExecStart"] == (
        "/srv/hello/releases/abc/.venv/bin/uwsgi --ini /run/uwsgi-apps/hello-canary.ini")


def test_extra_options_reach_ini_and_unit(app):
    app["uwsgi_options"] = {"reload-on-rss": 300, "env": ["A=1", "B=2"]}
    app["systemd_options"] = {"MemoryHigh": "400M"}
    pairs = ini_pairs(render("uwsgi.ini.j2", app))
    assert ("reload-on-rss", "300") in pairs
    assert ("env", "A=1") in pairs and ("env", "B=2") in pairs
    assert ("MemoryHigh", "400M") in unit_sections(render("uwsgi.service.j2", app))["Service"]


def test_a_changed_template_is_rendered_anew_across_runs(tmp_path: Path) -> None:
    """Compiled templates are kept across runs (Jinja2's bytecode cache); an edit is seen."""
    from keel.host import _environment, template_environment

    (tmp_path / "t.j2").write_text("one {{ x }}\n")
    assert template_environment([tmp_path]).get_template("t.j2").render(x=1) == "one 1\n"
    _environment.cache_clear()  # a new run: a new environment, the same cache on disk
    (tmp_path / "t.j2").write_text("two {{ x }}\n")
    env = template_environment([tmp_path])
    assert env.bytecode_cache is not None
    assert env.get_template("t.j2").render(x=2) == "two 2\n"
    _environment.cache_clear()
