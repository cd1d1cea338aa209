"""tls: acme without a host: bad input, the site before and after the certificate, when certbot
asks again, and how its failures are told in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from keel.errors import HostError
from roles import acme, apps
from roles.tls import FFDHE2048
from tests.unit.test_fleet import needs_nginx, nginx_t, render
from tests.unit.test_templates import base_app, nginx_lines

HOST: Any = SimpleNamespace(name="web1")


def resolved(tmp_path: Path, **settings: object) -> dict[str, Any]:
    app = {**apps.APP_DEFAULTS, "name": "hello", "server_name": "hello.example.org",
           "tls": "acme", "acme_email": "ops@example.org", **settings}
    apps._resolve_tls(HOST, app, tmp_path)
    return app


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("settings, message", [
    ({"acme_email": "ops"}, "acme_email 'ops' is not an email address (tls: acme needs one)"),
    ({"acme_email": "ops@localhost"}, "acme_email 'ops@localhost' is not an email address"),
    ({"acme_email": ""}, "acme_email '' is not an email address"),
    ({"server_name": "_"}, "server_name '_' cannot get an ACME certificate (tls: acme needs DNS "
                           "names, not '_', an IP address or a wildcard)"),
    ({"server_name": "hello.example.org 192.0.2.7"}, "server_name '192.0.2.7' cannot get"),
    ({"server_name": "2001:db8::1"}, "server_name '2001:db8::1' cannot get"),
    ({"server_name": "*.example.org"}, "server_name '*.example.org' cannot get"),
    ({"server_name": "localhost"}, "server_name 'localhost' cannot get"),
    ({"tls_cert": "cert.pem"}, "tls: acme and tls_cert are both set (use one: ACME gets the "
                               "certificate itself)"),
    ({"tls_key": "key.pem"}, "tls: acme and tls_key are both set"),
    ({"tls": "yes"}, "tls must be 'acme' (or unset, with tls_cert and tls_key for certificate "
                     "files), not 'yes'"),
    ({"acme_directory": "http://ca.example.org/dir"}, "acme_directory 'http://ca.example.org/dir' "
                                                       "is not an https:// URL"),
])
def test_bad_acme_settings_are_one_line_naming_the_app(tmp_path: Path, settings: dict,
                                                       message: str) -> None:
    with pytest.raises(HostError) as err:
        resolved(tmp_path, **settings)
    text = str(err.value)
    assert text.startswith(f"web1: app hello: {message}"), text
    assert "\n" not in text


def test_acme_app_resolves_to_certbots_files(tmp_path: Path) -> None:
    app = resolved(tmp_path, server_name="hello.example.org www.hello.example.org")
    assert app["tls"] is True and app["acme"] is True
    assert app["https"] is False  # until the host is found to have the certificate
    assert app["tls_cert_path"] == "/etc/letsencrypt/live/hello/fullchain.pem"
    assert app["tls_key_path"] == "/etc/letsencrypt/live/hello/privkey.pem"
    assert app["acme_directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    for name in ("c", "k"):
        (tmp_path / name).write_text(name)
    files = resolved(tmp_path, tls="", tls_cert=str(tmp_path / "c"), tls_key=str(tmp_path / "k"))
    assert files["https"] is True and files["acme"] is False


# ------------------------------------------------------------------ the site
def acme_site(https: bool) -> str:
    app = {**base_app(), "server_name": "hello.example.org", "tls": True, "acme": True,
           "https": https, "tls_listen": 443, "tls_hsts": 0, "acme_webroot": apps.ACME_WEBROOT,
           "tls_cert_path": "/etc/letsencrypt/live/hello/fullchain.pem",
           "tls_key_path": "/etc/letsencrypt/live/hello/privkey.pem",
           "tls_dhparam": "/etc/nginx/tls/ffdhe2048.pem"}
    return render("nginx-site.conf.j2", app=app, nginx_group="www-data")


def test_before_its_certificate_the_site_serves_http_and_the_challenge() -> None:
    text = acme_site(https=False)
    lines = nginx_lines(text)
    assert "ssl" not in text and "return 301" not in text
    assert "location ^~ /.well-known/acme-challenge/ {" in lines
    assert f"root {apps.ACME_WEBROOT};" in lines
    assert "uwsgi_pass unix:/run/hello/uwsgi.sock;" in lines


def test_with_its_certificate_port_80_redirects_all_but_the_challenge() -> None:
    text = acme_site(https=True)
    lines = nginx_lines(text)
    http, https = text.split("listen 443 ssl", 1)
    assert "location ^~ /.well-known/acme-challenge/ {" in nginx_lines(http)
    assert "return 301 https://$host$request_uri;" in nginx_lines(http)
    assert "acme-challenge" not in https
    assert "ssl_certificate /etc/letsencrypt/live/hello/fullchain.pem;" in lines
    assert "ssl_certificate_key /etc/letsencrypt/live/hello/privkey.pem;" in lines
    # The redirect is a location's: a server-level return would answer the challenge too.
    assert not any(ln.startswith("return") for ln in nginx_lines(http.split("location", 1)[0]))


@needs_nginx
def test_nginx_accepts_both_sites(tmp_path: Path) -> None:
    for https in (False, True):
        text = acme_site(https)
        for path in ("/etc/letsencrypt/live/hello/fullchain.pem",
                     "/etc/letsencrypt/live/hello/privkey.pem", "/etc/nginx/tls/ffdhe2048.pem"):
            text = text.replace(path, str(tmp_path / Path(path).name))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        "/CN=hello.example.org", "-keyout", str(tmp_path / "privkey.pem"),
                        "-out", str(tmp_path / "fullchain.pem")], check=True, capture_output=True)
        (tmp_path / "ffdhe2048.pem").write_text(FFDHE2048)
        done = nginx_t(tmp_path, text)
        assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ when certbot asks
LE = "https://acme-v02.api.letsencrypt.org/directory"


@pytest.mark.parametrize("have, why", [
    (None, "none yet"),
    (("", set()), "none yet"),
    ((LE, {"a.example.org"}), "the names changed"),
    ((LE, {"a.example.org", "b.example.org", "c.example.org"}), "the names changed"),
    (("https://acme-staging-v02.api.letsencrypt.org/directory", {"a.example.org", "b.example.org"}),
     "acme_directory changed"),
    ((LE, {"b.example.org", "a.example.org"}), None),
])
def test_certbot_asks_again_only_when_names_or_ca_change(have: Any, why: str | None) -> None:
    app = {"server_name": "a.example.org b.example.org", "acme_directory": LE}
    assert acme.due(app, have) == why


# ------------------------------------------------------------------ certbot's failures, one line
def summary(output: str) -> str:
    done = subprocess.run([sys.executable, "-c", acme.SUMMARY], input=output, capture_output=True,
                          text=True, check=True)
    assert done.stdout.count("\n") == 1, done.stdout
    return done.stdout.strip()


CHALLENGE_FAILED = """\
Saving debug log to /var/log/letsencrypt/letsencrypt.log
Requesting a certificate for hello.acme.test and elsewhere.acme.test

Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority \
reported these problems:
  Domain: elsewhere.acme.test
  Type:   connection
  Detail: 127.0.0.1: Fetching http://elsewhere.acme.test/.well-known/acme-challenge/x: \
Connection refused

Hint: The Certificate Authority failed to download the temporary challenge files created by \
Certbot. Ensure that the listed domains serve their content from the provided --webroot-path/-w \
and that files created there can be downloaded from the internet.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile \
/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.
"""

# certbot 2.1's own words (bookworm), a CA that refuses connections and one whose name
# does not resolve.
REFUSED = """\
Saving debug log to /var/log/letsencrypt/letsencrypt.log
An unexpected error occurred:
ValueError: Requesting 10.83.31.1/dir: Connection refused
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile \
/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.
"""

NO_NAME = """\
Saving debug log to /var/log/letsencrypt/letsencrypt.log
An unexpected error occurred:
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='ca.invalid', port=443): Max \
retries exceeded with url: /dir (Caused by NewConnectionError('<urllib3.connection.HTTPSConnection \
object at 0x7ff2f83fe310>: Failed to establish a new connection: [Errno -2] Name or service not known'))
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile \
/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.
"""


def test_a_failed_challenge_is_told_by_name_and_the_cas_detail() -> None:
    assert summary(CHALLENGE_FAILED) == (
        "elsewhere.acme.test: 127.0.0.1: Fetching "
        "http://elsewhere.acme.test/.well-known/acme-challenge/x: Connection refused")


def test_an_unreachable_ca_is_told_as_such() -> None:
    assert summary(REFUSED) == "cannot reach the CA (Requesting 10.83.31.1/dir: Connection refused)"
    assert summary(NO_NAME) == "cannot reach the CA ([Errno -2] Name or service not known)"
    assert summary("An unexpected error occurred:\nValueError: odd\nAsk for help\n") == "odd"


def test_any_other_failure_is_its_last_meaningful_line() -> None:
    assert summary("Saving debug log to /x\nSomething odd happened.\nAsk for help or search\n") == (
        "Something odd happened.")
