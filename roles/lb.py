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

Example inventory::

    all:
      children:
        lb:  {hosts: {lb1: {ansible_host: 10.0.0.10}}}
        app: {hosts: {web1: {ansible_host: 10.0.0.11}, web2: {ansible_host: 10.0.0.12}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.inventory import HostSpec
from keel.operation import q
from keel.ops import apt, files, systemd
from roles import nginx

#: Inventory group of the load balancers, and of the hosts they balance over.
GROUP = "lb"
BACKEND_GROUP = "app"
NAME = "lb"
SITE = f"/etc/nginx/sites-available/{NAME}"

DEFAULTS: dict[str, Any] = {
    **nginx.DEFAULTS,
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
}

HANDLERS = {"reload nginx": nginx.HANDLERS["reload nginx"]}


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
    nginx.check_ports(host, {int(host.vars["lb_listen"])})


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
    if v["nginx_disable_default_site"]:
        files.absent(host, "/etc/nginx/sites-enabled/default", notify="reload nginx")
    files.template(host, "lb.conf.j2", SITE, backends=v["lb_backends"], down=set(v["lb_down"]),
                   validate=nginx.site_validate(NAME), notify="reload nginx")
    files.symlink(host, f"/etc/nginx/sites-enabled/{NAME}", SITE, notify="reload nginx")
    systemd.service(host, "nginx", enabled=True, running=True)


def expectations(variables: dict[str, Any]) -> dict[str, Any]:
    """What ``fab verify`` should find on a load balancer: nginx and the lb site, no apps."""
    from roles import apps

    return {**apps.expectations(variables), "apps": [], "role": "lb",
            "lb_listen": {**DEFAULTS, **variables}["lb_listen"], "lb_site": NAME}
