"""What a deployed host must look like: nginx -> unix socket -> uWSGI (systemd) -> app.

Run by ``fab verify`` over SSH against the selected inventory hosts. Each
assertion message starts with the host name, so a failure says where and what.
"""

from __future__ import annotations

from typing import Any


def _who(host: Any) -> str:
    return host.backend.hostname


def _is_lb(expect: dict) -> bool:
    return expect.get("role") == "lb"


def test_packages_installed(host: Any, expect: dict) -> None:
    wanted = ["nginx", "nftables", "unattended-upgrades"] + ([] if _is_lb(expect) else ["python3-venv"])
    for pkg in wanted:
        assert host.package(pkg).is_installed, f"{_who(host)}: package {pkg} is not installed"


def test_services_enabled_and_running(host: Any, expect: dict) -> None:
    units = ["nginx", "nftables", "ssh"] + [a["unit"] for a in expect["apps"]]
    for unit in units:
        svc = host.service(unit)
        assert svc.is_enabled, f"{_who(host)}: {unit} is not enabled"
        assert svc.is_running, f"{_who(host)}: {unit} is not running"


def test_app_socket(host: Any, expect: dict) -> None:
    for app in expect["apps"]:
        sock = host.file(app["socket"])
        assert sock.is_socket, f"{_who(host)}: {app['socket']} is not a socket"
        assert sock.mode == 0o660, f"{_who(host)}: {app['socket']} mode is {sock.mode:o}, not 660"
        assert sock.user == app["user"], f"{_who(host)}: {app['socket']} owner is {sock.user}"
        assert sock.group == expect["nginx_group"], (
            f"{_who(host)}: {app['socket']} group is {sock.group}, not {expect['nginx_group']}")


def test_no_uwsgi_runs_as_root(host: Any, expect: dict) -> None:
    if _is_lb(expect):
        return  # a load balancer runs no app
    procs = host.check_output("ps -eo user=,args= | grep -i '[u]wsgi' || true")
    assert procs.strip(), f"{_who(host)}: no uwsgi process is running"
    as_root = [ln for ln in procs.splitlines() if ln.split()[0] == "root"]
    assert not as_root, f"{_who(host)}: uwsgi runs as root: {as_root}"


def test_uwsgi_ini(host: Any, expect: dict) -> None:
    for app in expect["apps"]:
        ini = host.file(app["ini_path"])
        assert ini.exists, f"{_who(host)}: {app['ini_path']} is missing"
        settings = {ln.split("=", 1)[0].strip(): ln.split("=", 1)[1].strip()
                    for ln in ini.content_string.splitlines() if "=" in ln and not ln.startswith("#")}
        where = f"{_who(host)}: {app['ini_path']}"
        assert settings.get("die-on-term") == "true", f"{where} lacks die-on-term"
        user = host.check_output(f"systemctl show -p User --value {app['unit']}")
        assert user == app["user"], f"{where}: {app['unit']} runs as {user!r}, not {app['user']}"


def test_nginx_site_enabled_and_valid(host: Any, expect: dict) -> None:
    for app in expect["apps"]:
        link = host.file(f"/etc/nginx/sites-enabled/{app['name']}")
        assert link.is_symlink, f"{_who(host)}: sites-enabled/{app['name']} is not a symlink"
        assert link.linked_to == f"/etc/nginx/sites-available/{app['name']}", (
            f"{_who(host)}: sites-enabled/{app['name']} points to {link.linked_to}")
    assert not host.file("/etc/nginx/sites-enabled/default").exists, (
        f"{_who(host)}: the default nginx site is still enabled")
    test = host.run("nginx -t")
    assert test.rc == 0, f"{_who(host)}: nginx -t fails: {test.stderr.strip()}"


def _healthy(code: str, statuses: str) -> bool:
    """``code`` is one of ``statuses`` ("2xx 3xx", "200 302")."""
    return any(code[:1] == s[:1] and (s[1:] == "xx" or code == s) for s in statuses.split())


def test_http_through_nginx(host: Any, expect: dict) -> None:
    """Each app answers its health path (as the deploy's gate asks it) healthy through nginx."""
    for app in expect["apps"]:
        name = app["server_name"].split()[0] if app["server_name"] != "_" else "localhost"
        if app.get("tls"):  # HTTP redirects; HTTPS serves (checked on this host, -k)
            port = app["tls_listen"]
            base = f"-k --resolve {name}:{port}:127.0.0.1 https://{name}:{port}"
        else:
            base = f"-H 'Host: {name}' http://127.0.0.1:{app['listen']}"

        def status(path: str, base: str = base) -> str:
            return host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' {base}{path}")

        path = app.get("health_path") or ("/" if status("/healthz") == "404" else "/healthz")
        if app.get("tls"):
            plain = host.check_output(
                f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {name}' "
                f"http://127.0.0.1:{app['listen']}{path}")
            assert plain == "301", (
                f"{_who(host)}: GET http://{name}{path} answered {plain}, not 301 to https")
        code = status(path)
        statuses = app.get("healthy_statuses", "2xx 3xx")
        assert _healthy(code, statuses), (
            f"{_who(host)}: app {app['name']}: GET {path} (Host: {name}) answered {code}, "
            f"not {statuses}")
        if app.get("tls"):
            _tls_key_is_private(host, app)
    if _is_lb(expect):
        _load_balancer_serves(host, expect)


def _tls_key_is_private(host: Any, app: dict) -> None:
    key = host.file(app["tls_key_path"])
    if key.is_symlink:  # certbot's live/ links to its archive/
        key = host.file(host.check_output(f"readlink -f {app['tls_key_path']}"))
    assert key.exists, f"{_who(host)}: {app['tls_key_path']} is missing"
    assert (key.mode, key.user, key.group) == (0o600, "root", "root"), (
        f"{_who(host)}: {app['tls_key_path']} is {key.user}:{key.group} {key.mode:o}, "
        "not root:root 600")


def _load_balancer_serves(host: Any, expect: dict) -> None:
    site = f"/etc/nginx/sites-enabled/{expect['lb_site']}"
    assert host.file(site).is_symlink, f"{_who(host)}: {site} is not a symlink"
    http = f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{expect['lb_listen']}/healthz"
    if expect.get("lb_tls"):  # HTTP redirects; HTTPS serves (checked on this host, -k)
        plain = host.check_output(http)
        assert plain == "301", (
            f"{_who(host)}: GET http://…/healthz on the load balancer answered {plain}, not 301")
        code = host.check_output("curl -sk -o /dev/null -w '%{http_code}' "
                                 f"https://127.0.0.1:{expect['lb_tls_listen']}/healthz")
        _tls_key_is_private(host, {"tls_key_path": expect["lb_tls_key_path"]})
    else:
        code = host.check_output(http)
    assert code == "200", f"{_who(host)}: GET /healthz through the load balancer answered {code}"


def test_firewall(host: Any, expect: dict) -> None:
    rules = host.check_output("nft list chain inet filter input")
    assert "policy drop" in rules, f"{_who(host)}: firewall input policy is not drop"
    for port in expect["firewall_allow_tcp"]:
        assert str(port) in rules, f"{_who(host)}: firewall does not allow tcp/{port}"


def test_sshd_hardened(host: Any) -> None:
    cfg = host.check_output("sshd -T 2>/dev/null")
    for setting in ("permitrootlogin no", "passwordauthentication no"):
        assert setting in cfg, f"{_who(host)}: sshd is not set to '{setting}'"


def test_env_file_mode(host: Any, expect: dict) -> None:
    for app in expect["apps"]:
        env = host.file(app["env_file"])
        assert env.exists, f"{_who(host)}: {app['env_file']} is missing"
        assert env.mode == 0o640, f"{_who(host)}: {app['env_file']} mode is {env.mode:o}, not 640"
        assert (env.user, env.group) == ("root", app["group"]), (
            f"{_who(host)}: {app['env_file']} is {env.user}:{env.group}, not root:{app['group']}")


def _exposure(host: Any, unit: str) -> float:
    """``systemd-analyze security``'s overall exposure of ``unit`` (0 = best, 10 = worst)."""
    out = host.check_output(f"systemd-analyze security {unit} | tail -n 1")
    return float(out.split("level for ")[1].split(":")[1].split()[0])


# Targets of docs/security.md (measured: apps 1.1, nginx 2.5).
MAX_APP_EXPOSURE = 1.5
MAX_NGINX_EXPOSURE = 3.5


def test_app_units_are_hardened(host: Any, expect: dict) -> None:
    for app in expect["apps"]:
        unit = app["unit"]
        check = host.run(f"systemd-analyze verify {unit}")
        assert check.rc == 0 and unit not in check.stderr, (
            f"{_who(host)}: systemd-analyze verify {unit}: {check.stderr.strip()}")
        score = _exposure(host, unit)
        print(f"{_who(host)}: {unit} exposure {score}")
        assert score <= MAX_APP_EXPOSURE, (
            f"{_who(host)}: {unit} exposure is {score}, above {MAX_APP_EXPOSURE}")


def test_nginx_unit_is_hardened(host: Any, expect: dict) -> None:
    if not expect.get("nginx_hardening", True):
        return
    score = _exposure(host, "nginx.service")
    print(f"{_who(host)}: nginx.service exposure {score}")
    assert score <= MAX_NGINX_EXPOSURE, (
        f"{_who(host)}: nginx.service exposure is {score}, above {MAX_NGINX_EXPOSURE}")


def test_security_updates_arrive(host: Any, expect: dict) -> None:
    """apt has the release's security suite and unattended-upgrades takes from it."""
    if not expect.get("apt_security_updates", True):
        return
    suite = f"{host.system_info.codename}-security"
    policy = host.check_output("apt-cache policy")
    assert f"n={suite},l=Debian-Security" in policy, (
        f"{_who(host)}: apt has no {suite} source (Debian-Security)")
    # Its first lines say which origins it allows and which packages it would
    # take from where; the whole dry run downloads for a minute, so it is
    # stopped once those lines are there (at most 60 s).
    out = host.check_output(
        "f=$(mktemp); unattended-upgrade --dry-run --debug >$f 2>&1 & p=$!;"
        " for i in $(seq 600); do grep -qE '^(Checking: |No packages found)' $f && break;"
        " kill -0 $p 2>/dev/null || break; sleep 0.1; done;"
        # A dry run changes nothing: KILL, as it would finish its current step on TERM.
        " kill -KILL $p 2>/dev/null; wait $p;"
        " grep -E '^(Allowed origins are:|Checking: |No packages found)' $f; rm -f $f")
    allowed = next((ln for ln in out.splitlines() if ln.startswith("Allowed origins")), "")
    assert "label=Debian-Security" in allowed, (
        f"{_who(host)}: unattended-upgrade does not take Debian-Security updates: {allowed!r}")
    checked = [ln for ln in out.splitlines() if ln.startswith("Checking: ")]
    assert not checked or any("label:'Debian-Security'" in ln for ln in checked), (
        f"{_who(host)}: unattended-upgrade sees no security update among {len(checked)} "
        f"packages: {checked[:3]}")


def test_reboot_is_not_automatic(host: Any) -> None:
    cfg = host.check_output("apt-config dump Unattended-Upgrade::Automatic-Reboot")
    assert '"false"' in cfg or not cfg.strip(), f"{_who(host)}: unattended-upgrades reboots: {cfg}"
