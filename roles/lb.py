"""lb: nginx on the hosts of inventory group ``lb``, balancing over the hosts of group ``app``.

The upstream lists every host of group ``app`` by its inventory address
(``ansible_host``) and speaks HTTP to its nginx on port 80, with passive
health checks (``max_fails``/``fail_timeout``), keep-alive connections, and a
retry on the next host for idempotent requests that fail to connect, time out
or get 502/503/504. The ``Host`` header is the client's (``$host``), so each
app host's nginx picks the site by ``server_name`` exactly as it would for a
direct client; set ``lb_backend_host`` to send one fixed name instead.

``fab deploy`` applies this role to the ``lb`` hosts and, when they exist,
deploys the app hosts in batches (``--serial``, default 1): each batch is
rendered ``down`` here and nginx reloaded gracefully, the batch is deployed
and health-checked, then this role checks each host's ``lb_health_path`` from
here and renders it back up. Hosts listed in ``lb_down`` are rendered
``down``; the rolling deploy sets it, and it is empty otherwise.

TLS: with ``lb_tls_cert`` and ``lb_tls_key`` (PEM files on the controller) the
lb terminates TLS on ``lb_tls_listen`` with the app hosts' Mozilla
"intermediate" profile (templates/tls-intermediate.conf.j2), port 80 only
redirects to HTTPS, and the app hosts are still spoken to in HTTP (leave TLS
off on them). The files go to ``/etc/nginx/tls/lb.{crt,key}``, the key 0600
root:root and uploaded as a secret.

With ``lb_tls: acme`` (and ``lb_acme_email``) the lb gets its certificate from an
ACME CA instead (``lb_acme_directory``, Let's Encrypt production by default) for
the names of ``lb_server_name``, by certbot as an ACME app does (roles/acme.py,
lineage ``lb``): the HTTP-01 challenge is answered by the lb's own nginx on
``lb_listen`` from certbot's webroot, never proxied to the app hosts, before and
after the switch to HTTPS. certbot's timer renews it, and its deploy hook reloads
nginx gracefully. A CA that cannot be reached leaves the lb serving as it was
(HTTP on a first deploy) and fails the run in one line. The certificate is deleted
when the lb no longer uses ACME.

Example inventory::

    all:
      children:
        lb:  {hosts: {lb1: {ansible_host: 10.0.0.10}}}
        app: {hosts: {web1: {ansible_host: 10.0.0.11}, web2: {ansible_host: 10.0.0.12}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.inventory import HostSpec
from keel.operation import q
from keel.ops import apt, files, systemd
from roles import acme, apps, nginx, tls

#: Inventory group of the load balancers, and of the hosts they balance over.
GROUP = "lb"
BACKEND_GROUP = "app"
NAME = "lb"
SITE = f"/etc/nginx/sites-available/{NAME}"
TLS_CERT = f"{apps.TLS_DIR}/{NAME}.crt"
TLS_KEY = f"{apps.TLS_DIR}/{NAME}.key"
TLS_DHPARAM = f"{apps.TLS_DIR}/ffdhe2048.pem"
ACME_CERT = f"{apps.ACME_LIVE_DIR}/{NAME}/fullchain.pem"
ACME_KEY = f"{apps.ACME_LIVE_DIR}/{NAME}/privkey.pem"

DEFAULTS: dict[str, Any] = {
    **nginx.DEFAULTS,
    **acme.DEFAULTS,
    "lb_listen": 80,
    "lb_server_name": "_",
    # Port of the app hosts' nginx.
    "lb_backend_port": 80,
    # Host header sent to the app hosts; "" passes the client's ($host).
    "lb_backend_host": "",
    "lb_upstream": "app_hosts",
    # Passive health checks: after max_fails failures within fail_timeout
    # seconds, a host gets no requests for fail_timeout seconds.
    "lb_max_fails": 2,
    "lb_fail_timeout": 10,
    "lb_keepalive": 16,
    "lb_connect_timeout": 2,
    "lb_read_timeout": 60,
    "lb_next_upstream_tries": 3,
    "lb_next_upstream_timeout": 10,
    "lb_client_max_body_size": "10m",
    # Checked from the lb before a host goes back into service (expects 200).
    "lb_health_path": "/healthz",
    # Hosts rendered "down"; set by the rolling deploy (see keel.rolling).
    "lb_down": [],
    "lb_down_returning": [],
    # TLS termination: local paths (on the controller; relative: from the
    # project dir) of the PEM certificate chain and its key. With both, the lb
    # serves HTTPS on lb_tls_listen and port lb_listen only redirects to it.
    "lb_tls_cert": "",
    "lb_tls_key": "",
    "lb_tls_listen": 443,
    # Strict-Transport-Security max-age in seconds (0: no HSTS header).
    "lb_tls_hsts": 0,
    # lb_tls: acme gets the certificate from an ACME CA instead, for the names of
    # lb_server_name (DNS names pointing at this lb), with the HTTP-01 challenge
    # answered on lb_listen. Not together with lb_tls_cert/lb_tls_key.
    "lb_tls": "",
    # The account's contact address, for the CA's expiry notices (required with ACME).
    "lb_acme_email": "",
    # The CA's ACME directory (Let's Encrypt's staging CA for trials:
    # https://acme-staging-v02.api.letsencrypt.org/directory).
    "lb_acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
}

HANDLERS = {name: nginx.HANDLERS[name] for name in ("restart nginx", "reload nginx")}


def is_balancer(spec: HostSpec) -> bool:
    return GROUP in spec.groups


def backends(fleet: Sequence[HostSpec]) -> list[dict[str, str]]:
    """The hosts of group ``app`` (never an lb itself), by inventory address.

    >>> backends([HostSpec("web1", "10.0.0.11", None, None, None, ("all", "app"), {})])
    [{'name': 'web1', 'address': '10.0.0.11'}]
    """
    return [{"name": h.name, "address": h.address} for h in fleet
            if BACKEND_GROUP in h.groups and not is_balancer(h)]


class Pool:
    """A role with no operations: ``lb_backends`` from the whole inventory, as a default.

    Defaults rank lowest, so ``lb_backends`` set in group_vars/host_vars wins.
    """

    def __init__(self, fleet: Sequence[HostSpec]) -> None:
        self.DEFAULTS = {"lb_backends": backends(fleet)}

    def apply(self, host: Host) -> None:
        pass


def preflight(host: Host) -> None:
    pool = host.vars.get("lb_backends") or []
    if not pool:
        raise HostError(host.name, f"lb: no backends (no host in inventory group {BACKEND_GROUP!r})")
    names = {b["name"] for b in pool}
    unknown = sorted(set(host.vars["lb_down"]) - names)
    if unknown:
        raise HostError(host.name, f"lb: lb_down names unknown backends {unknown}")
    tls_files(host)
    check_acme(host)
    # The lb's lineage, if any: it serves HTTPS from the start, or it is left to delete.
    have = acme.lineages(host, [NAME]).get(NAME)
    host.memo["lb_acme_have"] = bool(have and have[1])
    host.memo["lb_acme_due"] = acme.due(certificate(host), have) if uses_acme(host) else None
    ports = {int(host.vars["lb_listen"])}
    if uses_tls(host.vars):
        ports.add(int(host.vars["lb_tls_listen"]))
    nginx.check_ports(host, ports)


def uses_tls(variables: dict[str, Any]) -> bool:
    return bool(variables.get("lb_tls_cert") or variables.get("lb_tls_key")
                or variables.get("lb_tls") == "acme")


def uses_acme(host: Host) -> bool:
    """``lb_tls: acme``; any other value but unset is an error."""
    mode = host.vars.get("lb_tls")
    if mode not in ("", None, False, "acme"):
        raise HostError(host.name, f"lb: lb_tls must be 'acme' (or unset, with lb_tls_cert and "
                                   f"lb_tls_key for certificate files), not {mode!r}")
    return mode == "acme"


def check_acme(host: Host) -> None:
    """With ``lb_tls: acme``: an email address, DNS names, no certificate files."""
    v = host.vars
    if uses_acme(host):
        acme.check_settings(host, "lb", "lb_", email=v["lb_acme_email"],
                            directory=v["lb_acme_directory"], server_name=v["lb_server_name"],
                            files={k: v[k] for k in ("lb_tls_cert", "lb_tls_key")})


def certificate(host: Host) -> dict[str, Any]:
    """What certbot is asked for (see :func:`roles.acme.certbot`)."""
    v = host.vars
    return {"name": NAME, "label": "lb", "server_name": v["lb_server_name"],
            "listen": v["lb_listen"], "acme_email": v["lb_acme_email"],
            "acme_directory": v["lb_acme_directory"]}


def tls_files(host: Host) -> tuple[Path, Path] | None:
    """The lb's certificate and key on the controller, both readable, or None without TLS
    files (none, or ``lb_tls: acme``)."""
    v = host.vars
    if not uses_tls(v) or uses_acme(host):
        return None
    project = Path(v.get("project_dir") or ".")
    found = []
    for key in ("lb_tls_cert", "lb_tls_key"):
        if not v[key]:
            raise HostError(host.name, f"lb: {key} is not set (TLS needs both lb_tls_cert "
                                       "and lb_tls_key)")
        path = Path(v[key])
        path = path if path.is_absolute() else project / path
        if not path.is_file():
            raise HostError(host.name, f"lb: {key} {path} does not exist")
        found.append(path)
    return found[0], found[1]


def check_returning(host: Host) -> None:
    """Each host coming back must answer ``lb_health_path`` with 200 from here: one round trip."""
    v = host.vars
    pool = {b["name"]: b["address"] for b in v["lb_backends"]}
    header = f"-H {q('Host: ' + v['lb_backend_host'])} " if v["lb_backend_host"] else ""
    port, path = v["lb_backend_port"], v["lb_health_path"]
    checks = [
        f"c=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {header}"
        f"{q(f'http://{pool[n]}:{port}{path}')}); "
        f"[ \"$c\" = 200 ] || {{ echo {q(n)} {q(pool[n])} \"$c\"; exit 1; }}"
        for n in v["lb_down_returning"] if n in pool
    ]
    if not checks:
        return
    res = host.run("\n".join(checks))
    if not res.ok:
        name, address, code = [*res.out.split(), "?", "?", "?"][:3]
        raise HostError(host.name, f"lb: {name} ({address}) answered {code} on "
                                   f"{v['lb_health_path']} from here; it stays out of service")


def apply(host: Host) -> None:
    v = host.vars
    check_returning(host)
    apt.packages(host, v["nginx_packages"])
    nginx.harden(host)
    if v["nginx_disable_default_site"]:
        files.absent(host, "/etc/nginx/sites-enabled/default", notify="reload nginx")
    pem, with_acme = tls_files(host), uses_acme(host)
    if pem or with_acme:  # before the site, so its nginx -t finds them
        files.directory(host, apps.TLS_DIR, owner="root", group="root", mode="0700")
        files.file(host, TLS_DHPARAM, tls.FFDHE2048, mode="0644", notify="reload nginx")
    if pem:
        files.file(host, TLS_CERT, pem[0].read_bytes(), mode="0644", notify="reload nginx")
        files.file(host, TLS_KEY, pem[1].read_bytes(), mode="0600", secret=True,
                   notify="reload nginx")
    if with_acme:
        acme.install(host)
    # An ACME lb serves HTTPS once it has its certificate (in this run, or before).
    site(host, https=bool(pem) or (with_acme and host.memo.get("lb_acme_have", False)))
    if not pem:  # once the site no longer refers to them
        for path in (TLS_KEY, TLS_CERT):
            files.absent(host, path)
    if not with_acme and host.memo.get("lb_acme_have"):
        acme.delete(host, NAME, "lb")
    systemd.service(host, "nginx", enabled=True, running=True)
    why = host.memo.get("lb_acme_due")
    if with_acme and why:
        wanted = certificate(host)
        reason = acme.obtain(host, wanted, why)
        if reason:
            names = " ".join(str(wanted["server_name"]).split())
            raise HostError(host.name, f"lb: no certificate for {names} from "
                                       f"{wanted['acme_directory']}: {reason}; " + (
                "still serving the previous one" if host.memo.get("lb_acme_have")
                else "serving HTTP"))
        if not host.check:
            site(host, https=True)


def site(host: Host, https: bool) -> None:
    """The lb's nginx site: HTTPS (from files or ACME) with the redirect, or HTTP."""
    v = host.vars
    with_acme = uses_acme(host)
    files.template(host, "lb.conf.j2", SITE, backends=v["lb_backends"], down=set(v["lb_down"]),
                   tls=https, acme=with_acme, acme_webroot=apps.ACME_WEBROOT,
                   tls_cert_path=ACME_CERT if with_acme else TLS_CERT,
                   tls_key_path=ACME_KEY if with_acme else TLS_KEY,
                   tls_dhparam=TLS_DHPARAM, tls_hsts=v["lb_tls_hsts"],
                   validate=nginx.site_validate(NAME), notify="reload nginx")
    files.symlink(host, f"/etc/nginx/sites-enabled/{NAME}", SITE, notify="reload nginx")


def expectations(variables: dict[str, Any]) -> dict[str, Any]:
    """What ``fab verify`` should find on a load balancer: nginx and the lb site, no apps."""
    merged = {**DEFAULTS, **variables}
    return {**apps.expectations(variables), "apps": [], "role": "lb",
            "lb_listen": merged["lb_listen"], "lb_site": NAME,
            "lb_tls": uses_tls(merged), "lb_tls_listen": merged["lb_tls_listen"],
            "lb_tls_key_path": ACME_KEY if merged["lb_tls"] == "acme" else TLS_KEY}
