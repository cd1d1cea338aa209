"""python: the interpreter, build tools for uWSGI, each app's system user and its venv.

The venv lives at ``/srv/<app>/venvs/<key>``, where the key hashes the app's
pinned requirements (plus pinned uwsgi) and the interpreter version, so a new
venv is built only when one of them changes, and the old one keeps serving
until the switch.
"""

from __future__ import annotations

from typing import Any

from keel.host import Host
from keel.ops import apt, files, python, server
from roles import apps

DEFAULTS: dict[str, Any] = {
    # python3-venv for the venvs; a compiler and headers because pip builds uWSGI.
    "python_packages": ["python3", "python3-venv", "python3-dev", "build-essential"],
    # The compilers and the assembler may be run by root only (dpkg-statoverride, so
    # upgrades keep it): deploys build as root, and an intruder in an app account
    # cannot build tools. An app that compiles at run time needs this off.
    "restrict_compilers": True,
}

COMPILERS = ("/usr/bin/gcc", "/usr/bin/cc", "/usr/bin/g++", "/usr/bin/c++", "/usr/bin/as")
# Each compiler's real file (they are links to versioned names) owned by root, 0750.
RESTRICT_COMPILERS = (
    f"for f in {' '.join(COMPILERS)}; do [ -e \"$f\" ] || continue; r=$(readlink -f \"$f\");"
    ' dpkg-statoverride --list "$r" >/dev/null ||'
    ' dpkg-statoverride --update --add root root 0750 "$r"; done'
)
# True when every compiler present is 0750 (one stat for all: this runs on every deploy).
COMPILERS_RESTRICTED = f"! stat -L -c %a {' '.join(COMPILERS)} 2>/dev/null | grep -qvx 750"



def apply(host: Host) -> None:
    apt.packages(host, host.vars["python_packages"])
    if host.vars["restrict_compilers"]:
        server.command(host, RESTRICT_COMPILERS, unless=COMPILERS_RESTRICTED,
                       name="compilers for root only")
    for app in apps.resolve(host):
        server.group(host, app["group"])
        server.user(host, app["user"], group=app["group"], system=True,
                    shell="/usr/sbin/nologin", home=app["root"])
        # Traversable, not listable: nginx reaches static files in the release.
        files.directory(host, app["root"], owner="root", group=app["group"], mode="0751")
        files.directory(host, f"{app['root']}/venvs", owner="root", group=app["group"],
                        mode="0750")
        python.venv(host, app["venv"], app["requirements_text"], owner="root", group="root")
