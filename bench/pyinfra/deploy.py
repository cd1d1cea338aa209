"""keel's ``fab deploy`` (roles python, app, uwsgi, nginx) as a pyinfra deploy, op for op.

Run by bench/provision.py: ``pyinfra inventory.py deploy.py -y``. Variables come from the
JSON file in ``KEEL_BENCH_VARS`` (``app`` is keel's own resolved app dict); the templates
are keel's ``templates/*.j2`` rendered with the same Jinja settings. Handlers are ops
guarded with ``_if=any_changed(...)``, pyinfra's equivalent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

V = json.loads(Path(os.environ["KEEL_BENCH_VARS"]).read_text())
app = V["app"]
T = V["keel_templates"]
JINJA = {"trim_blocks": True, "lstrip_blocks": True}  # pyinfra keeps trailing newlines

# --- python role
apt.packages(name="Python, venv and build packages", packages=V["python_packages"], update=True,
             cache_time=3600, no_recommends=True)
server.group(name="App group", group=app["group"], system=True)
server.user(name="App user", user=app["user"], group=app["group"], system=True,
            shell="/usr/sbin/nologin", home=app["root"], create_home=False, ensure_home=False)
files.directory(name="App root", path=app["root"], user="root", group=app["group"], mode="751")
files.directory(name="Venvs dir", path=f"{app['root']}/venvs", user="root", group=app["group"],
                mode="750")
# Same rule as keel: a venv per requirements key, with a marker written last.
if not host.get_fact(File, path=f"{app['venv']}/.keel-venv"):
    server.shell(name="Venv with pinned requirements", commands=[V["venv_script"]])

# --- app role
files.directory(name="Releases dir", path=f"{app['root']}/releases", user="root",
                group=app["group"], mode="751")
files.directory(name="Shared dir", path=f"{app['root']}/shared", user="root", group=app["group"],
                mode="750")
files.directory(name="State dir", path=app["state_dir"], user=app["user"], group=app["group"],
                mode="750")
env = files.template(name="Env file", src=f"{T}/app.env.j2", dest=app["env_file"], user="root",
                     group=app["group"], mode="640", jinja_env_kwargs=JINJA, app=app)
if not host.get_fact(File, path=f"{app['release_dir']}/.keel-tree"):
    tarball = f"/tmp/bench-release-{app['release']}.tar.gz"
    files.put(name="Release tarball", src=V["release_tarball"], dest=tarball)
    server.shell(name="Release code", commands=[
        f"tar -xzf {tarball} -C {app['root']}/releases --no-same-owner && rm -f {tarball}"])
if not host.get_fact(File, path=V["import_check_marker"]):
    server.shell(name="Import check in the release",
                 commands=[f"cd {app['release_dir']} && {V['import_check_cmd']}"])
if not host.get_fact(File, path=V["pre_start_marker"]):
    server.shell(name="Pre-start (migrate) in the release",
                 commands=[f"cd {app['release_dir']} && {V['pre_start_cmd']}"])
current = files.link(name="Current release link", path=app["code_dir"],
                     target=f"releases/{app['release']}")

# --- uwsgi role
files.directory(name="uWSGI ini dir", path="/etc/uwsgi-apps", user="root", group="root",
                mode="755")
ini = files.template(name="uWSGI ini", src=f"{T}/uwsgi.ini.j2", dest=app["ini_path"], user="root",
                     group=app["group"], mode="640", jinja_env_kwargs=JINJA, app=app,
                     nginx_group=V["nginx_group"])
unit = files.template(name="uWSGI unit", src=f"{T}/uwsgi.service.j2",
                      dest=f"/etc/systemd/system/{app['unit']}", user="root", group="root",
                      mode="644", jinja_env_kwargs=JINJA, app=app, nginx_group=V["nginx_group"])
systemd.daemon_reload(name="systemd daemon-reload", _if=unit.did_change)
systemd.service(name="uWSGI service", service=app["unit"], running=True, enabled=True)

# --- nginx role
apt.packages(name="nginx package", packages=V["nginx_packages"], cache_time=3600,
             no_recommends=True)
default_site = files.link(name="No default site", path="/etc/nginx/sites-enabled/default",
                          present=False)
site = files.template(name="nginx site", src=f"{T}/nginx-site.conf.j2",
                      dest=f"/etc/nginx/sites-available/{app['name']}", user="root",
                      group="root", mode="644", jinja_env_kwargs=JINJA, app=app,
                      nginx_group=V["nginx_group"])
site_link = files.link(name="nginx site enabled", path=f"/etc/nginx/sites-enabled/{app['name']}",
                       target=f"/etc/nginx/sites-available/{app['name']}")
systemd.service(name="nginx service", service="nginx", running=True, enabled=True)

# --- handlers
systemd.service(name="Restart app", service=app["unit"], running=True, restarted=True,
                _if=any_changed(env, current, ini, unit))
server.shell(name="Reload nginx", commands=["nginx -t -q && systemctl reload nginx"],
             _if=any_changed(default_site, site, site_link))
