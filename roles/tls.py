"""tls: each TLS app's certificate and private key for nginx (see ``tls_cert``/``tls_key`` in roles/apps.py).

Files on the host, in ``/etc/nginx/tls`` (0700 root:root; only nginx's
master, running as root, reads them)::

    <app>.crt       the certificate chain, 0644
    <app>.key       the private key, 0600 root:root, uploaded as a secret: its
                    content never appears in output, plans or --json
    ffdhe2048.pem   the RFC 7919 DH group, for the intermediate profile's DHE suites

An app with ``tls: acme`` gets the DH group only: certbot keeps its certificate
and key (roles/acme.py).

The nginx site (templates/nginx-site.conf.j2) is rendered after these exist,
so its ``nginx -t`` check sees them. :data:`cleanup`, which runs after the
nginx role, removes the key and certificate of an app that no longer has
TLS, once its site no longer refers to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.host import Host
from keel.ops import files
from roles import apps

DEFAULTS: dict[str, Any] = {}

# The ffdhe2048 group of RFC 7919, as Mozilla's generator recommends for "intermediate"
# (`openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048`).
FFDHE2048 = """\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def apply(host: Host) -> None:
    secured = [a for a in apps.resolve(host) if a["tls"]]
    if not secured:
        return
    files.directory(host, apps.TLS_DIR, owner="root", group="root", mode="0700")
    files.file(host, secured[0]["tls_dhparam"], FFDHE2048, mode="0644", notify="reload nginx")
    for app in (a for a in secured if not a["acme"]):
        files.file(host, app["tls_cert_path"], Path(app["tls_cert"]).read_bytes(), mode="0644",
                   notify="reload nginx")
        files.file(host, app["tls_key_path"], Path(app["tls_key"]).read_bytes(), mode="0600",
                   secret=True, notify="reload nginx")


class Cleanup:
    """After the nginx role: no key or certificate is left for an app without TLS files."""

    DEFAULTS: dict[str, Any] = {}

    def apply(self, host: Host) -> None:
        for app in apps.resolve(host):
            if not app["tls"] or app["acme"]:
                for suffix in ("key", "crt"):
                    files.absent(host, f"{apps.TLS_DIR}/{app['name']}.{suffix}")


cleanup = Cleanup()
