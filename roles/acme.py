"""acme: certificates from an ACME CA for the apps with ``tls: acme``, by Debian's certbot.

The load balancer's ``lb_tls: acme`` (roles/lb.py) calls the same functions here:
:func:`check_settings`, :func:`lineages`, :func:`due`, :func:`install`,
:func:`obtain` and :func:`delete`, with its own lineage (``lb``) and settings.

For each such app, certbot keeps one lineage named after the app (``--cert-name``)
for every name of its ``server_name``, proved by the HTTP-01 challenge: certbot
writes the CA's token under ``/var/www/keel-acme`` (``--webroot``), and the app's
own nginx site serves that directory at ``/.well-known/acme-challenge/`` on port
``listen`` (templates/acme-challenge.conf.j2), before and after the switch to HTTPS.
nginx reads the certificate where certbot keeps it::

    /etc/letsencrypt/live/<app>/fullchain.pem   the chain
    /etc/letsencrypt/live/<app>/privkey.pem     the key (0600 root:root; never leaves the host)

A first deploy renders the site over HTTP with the challenge location, reloads nginx,
asks for the certificate, then renders the site over HTTPS and reloads again (the
deploy's health gate then asks it over HTTPS). A certificate is asked for again only
when the names or ``acme_directory`` change. If the CA cannot be reached or a name
fails its challenge, the site keeps serving as it was (HTTP on a first deploy, the
previous certificate later) and the run fails, after the health gate, with one line
naming the app and the CA's reason.

Renewal is certbot's own: Debian's ``certbot.timer`` runs ``certbot -q renew``
twice a day, which renews a certificate 30 days before it expires with the same
webroot, then runs the deploy hook
``/etc/letsencrypt/renewal-hooks/deploy/keel-reload-nginx``: ``nginx -t`` and a
graceful reload (new workers take the new certificate; the old ones finish the
requests they hold), so no request is dropped.

The ACME client trusts the CA's TLS certificate through the host's trust store
(``/etc/ssl/certs``), as any program there does.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from keel.errors import HostError, OperationError
from keel.host import Host
from keel.operation import q
from keel.ops import apt, files, server, systemd
from roles import apps
from roles import nginx as nginx_role

DEFAULTS: dict[str, Any] = {
    # The ACME client, from Debian's archive (its certbot.timer renews).
    "acme_packages": ["certbot"],
    # Seconds certbot may take for one certificate (registration, challenges, issuance).
    "acme_timeout": 120,
}

RENEWAL_DIR = "/etc/letsencrypt/renewal"
DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/keel-reload-nginx"

# certbot's output when it failed, reduced to one line (runs on the host, reading stdin):
# the CA's reason per failed name, else what stopped it (an unreachable CA), else its
# last line that is not boilerplate.
SUMMARY = r"""
import re, sys
text = sys.stdin.read()
lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Domain:")]
details = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Detail:")]
if details:
    print("; ".join(f"{n}: {d}" for n, d in zip(names, details)) if len(names) == len(details)
          else "; ".join(details))
    sys.exit()
if "An unexpected error occurred:" in lines[:-1]:
    error = lines[lines.index("An unexpected error occurred:") + 1]
    found = re.search(r"Failed to establish a new connection: ([^'\")]*)", error)
    error = found.group(1) if found else re.sub(r"^[\w.]+(Error|Exception): ", "", error)
    network = ("refused", "not known", "timed out", "unreachable", "Max retries", "verify failed",
               "Temporary failure", "Requesting")
    print(f"cannot reach the CA ({error})" if any(w in error for w in network) else error[:300])
    sys.exit()
boilerplate = ("Ask for help", "See the logfile", "Saving debug log")
rest = [ln for ln in lines if not ln.startswith(boilerplate)]
print((rest or ["certbot failed"])[-1][:300])
"""


# A DNS name as a public CA issues for it over HTTP-01: letters, digits and hyphens in
# dot-separated labels, at least two labels, no wildcard (HTTP-01 cannot prove one).
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)+(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")


def check_settings(host: Host, who: str, prefix: str, *, email: Any, directory: Any,
                   server_name: Any, files: dict[str, Any]) -> None:
    """Bad ACME settings of ``who`` (an app, or the lb), as one-line errors.

    ``prefix`` is put before the setting names (``lb_`` on a load balancer);
    ``files`` are the certificate-file settings that must stay unset.
    """
    for key, value in files.items():
        if value:
            raise HostError(host.name, f"{who}: {prefix}tls: acme and {key} are both set "
                                       "(use one: ACME gets the certificate itself)")
    if not _EMAIL.match(str(email or "")):
        raise HostError(host.name, f"{who}: {prefix}acme_email {email!r} is not an "
                                   f"email address ({prefix}tls: acme needs one)")
    if not str(directory).startswith("https://"):
        raise HostError(host.name, f"{who}: {prefix}acme_directory {directory!r} is "
                                   "not an https:// URL")
    names = str(server_name).split()
    bad = [n for n in names if not _DNS_NAME.match(n) or _is_ip(n)]
    if not names or bad:
        raise HostError(host.name, f"{who}: {prefix}server_name {(bad or [''])[0]!r} cannot get "
                                   f"an ACME certificate ({prefix}tls: acme needs DNS names, not "
                                   "'_', an IP address or a wildcard)")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def lineages(host: Host, names: list[str]) -> dict[str, tuple[str, set[str]]]:
    """certbot's lineages of these names: {name: (directory URL, DNS names)}."""
    found: dict[str, tuple[str, set[str]]] = {}
    if not names:
        return found
    res = host.run(
        f"for n in {' '.join(q(n) for n in names)}; do c={RENEWAL_DIR}/$n.conf; [ -f \"$c\" ] || continue;"
        " s=$(sed -n 's/^server *= *//p' \"$c\");"
        " d=$(openssl x509 -in /etc/letsencrypt/live/$n/cert.pem -noout -ext subjectAltName"
        " 2>/dev/null | tr -d ' ' | tr ',' '\\n' | sed -n 's/^DNS://p' | tr '\\n' ' ');"
        " echo \"$n|$s|$d\"; done; true")
    for line in res.out.splitlines():
        name, directory, dns = [*line.split("|"), "", ""][:3]
        found[name] = (directory.strip(), set(dns.split()))
    return found


def due(cert: dict[str, Any], have: tuple[str, set[str]] | None) -> str | None:
    """Why certbot must ask for ``cert`` now, or None if the one it has is right.

    ``cert`` is what is wanted: ``server_name`` and ``acme_directory`` (an app, or the
    lb's settings under these names).

    >>> due({"server_name": "a.org b.org", "acme_directory": "https://ca/dir"},
    ...     ("https://ca/dir", {"a.org"}))
    'the names changed'
    """
    if not have or not have[1]:
        return "none yet"
    if have[1] != set(str(cert["server_name"]).split()):
        return "the names changed"
    if have[0] != cert["acme_directory"]:
        return "acme_directory changed"
    return None


def preflight(host: Host) -> None:
    """Which ACME apps have their certificate (their site serves HTTPS from the start)."""
    found = host.memo["acme_lineages"] = lineages(host, [a["name"] for a in apps.resolve(host)])
    for app in apps.resolve(host):
        if app["acme"]:
            app["acme_due"] = due(app, found.get(app["name"]))
            app["https"] = bool(found.get(app["name"], ("", set()))[1])


def certbot(host: Host, cert: dict[str, Any]) -> str:
    """The host script that gets ``cert``'s certificate, once its site serves the challenge.

    ``cert``: ``name`` (certbot's lineage), ``server_name``, ``listen`` (the HTTP port
    serving the challenge), ``acme_email``, ``acme_directory``.
    """
    names = str(cert["server_name"]).split()
    probe = f"keel-probe-{cert['name']}"
    folder = f"{apps.ACME_WEBROOT}/.well-known/acme-challenge"
    ask = (f"curl -s --max-time 2 -H {q('Host: ' + names[0])} "
           f"http://127.0.0.1:{int(cert['listen'])}/.well-known/acme-challenge/{probe}")
    cmd = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--force-renewal",
           "--email", cert["acme_email"], "--server", cert["acme_directory"],
           "--webroot", "-w", apps.ACME_WEBROOT, "--cert-name", cert["name"],
           *[arg for name in names for arg in ("-d", name)]]
    # The reload that enabled the challenge location returns before every worker has
    # the new site: the CA is asked only once nginx serves a file from the webroot.
    return f"""mkdir -p {folder} && echo ok > {folder}/{probe}
i=0; until [ "$({ask})" = ok ]; do
  i=$((i + 1)); [ $i -lt 50 ] || {{ rm -f {folder}/{probe}
    echo "its site does not serve {folder} at http://{names[0]}/.well-known/acme-challenge/" >&2
    exit 1; }}
  sleep 0.2
done
rm -f {folder}/{probe}
out=$(timeout {int(host.vars['acme_timeout'])} {' '.join(q(c) for c in cmd)} 2>&1) && exit 0
printf '%s\\n' "$out" >&2
printf '%s' "$out" | python3 -c {q(SUMMARY)} >&2
exit 1"""


def install(host: Host) -> None:
    """certbot, the webroot nginx serves the challenge from, the deploy hook, the timer."""
    apt.packages(host, host.vars["acme_packages"])
    files.directory(host, apps.ACME_WEBROOT, mode="0755")
    files.directory(host, DEPLOY_HOOK.rsplit("/", 1)[0], mode="0755")
    files.template(host, "certbot-deploy-hook.sh.j2", DEPLOY_HOOK, mode="0755")
    systemd.service(host, "certbot.timer", enabled=True, running=True)


def obtain(host: Host, cert: dict[str, Any], why: str) -> str | None:
    """Ask the CA for ``cert`` (see :func:`certbot`) once nginx serves the challenge
    location: None when certbot got it (or in a plan), else its reason in one line."""
    names = " ".join(str(cert["server_name"]).split())
    if not host.check:
        host.flush_handlers()  # nginx serves the challenge location from here on
    try:
        server.command(host, certbot(host, cert),
                       name=f"{cert['label']}: ACME certificate for {names} ({why})")
    except OperationError:
        return host.results[-1].error or "certbot failed"
    return None


def delete(host: Host, name: str, label: str) -> None:
    """Delete lineage ``name``: certbot's timer would keep renewing a certificate no one uses."""
    server.command(host, f"certbot delete --non-interactive --cert-name {q(name)}",
                   name=f"{label}: ACME certificate no longer used: deleted")


def apply(host: Host) -> None:
    every = apps.resolve(host)
    found = host.memo.get("acme_lineages", {})
    for app in every:
        if not app["acme"] and app["name"] in found:
            delete(host, app["name"], app["name"])
    secured = [app for app in every if app["acme"]]
    if not secured:
        return
    install(host)
    failed = host.memo.setdefault("acme_failed", [])
    for app in secured:
        why = app.get("acme_due")
        if not why:
            continue
        reason = obtain(host, {**app, "label": app["name"]}, why)
        if reason:
            names = " ".join(str(app["server_name"]).split())
            failed.append(f"app {app['name']}: no certificate for {names} from "
                          f"{app['acme_directory']}: {reason}; "
                          + ("still serving the previous one" if app["https"] else "serving HTTP"))
            continue
        if not host.check:
            app["https"] = True
            nginx_role.site(host, app)


class Found:
    """For plays that leave certificates alone (``fab rollback``): which ACME apps have
    theirs, so the health gate asks those over HTTPS, as their site serves them."""

    DEFAULTS: dict[str, Any] = {}

    def preflight(self, host: Host) -> None:
        preflight(host)

    def apply(self, host: Host) -> None:
        pass


found = Found()


class Verdict:
    """After the health gate: a certificate that could not be had fails the run, in one line."""

    DEFAULTS: dict[str, Any] = {}

    def apply(self, host: Host) -> None:
        failed = host.memo.get("acme_failed")
        if failed:
            raise HostError(host.name, "; ".join(failed))


verdict = Verdict()
