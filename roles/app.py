"""app: ship the code as a release, its settings, its state dir, and point ``current`` at it.

A release is the app's source tree, uploaded once to
``/srv/<app>/releases/<release>/`` (the release id is a digest of the tree),
with each of ``shared_paths`` linked to ``/srv/<app>/shared/<path>``. Then,
inside it and as the app user: the import check; a snapshot of the data (state
dir and shared paths, to ``/srv/<app>/snapshots/``); ``setup`` on the app's
first deploy to the host; ``pre_start`` for every new release. A failed setup or
pre_start puts the data back from the snapshot. Last, a canary
(``roles/uwsgi.py``) starts the new unit, ini and env file from the release and
asks for its health, all before ``current`` switches to it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from keel.host import Host
from keel.operation import q
from keel.ops import files, server
from roles import apps, uwsgi

DEFAULTS: dict[str, Any] = {
    # Run each app's `setup` commands again (fab deploy --rerun-setup), snapshot first.
    "rerun_setup": False,
}

# Imports module:callable the way uWSGI will (calling it for "pkg:factory()"),
# so a release that cannot even load never becomes current.
IMPORT_CHECK = """
import importlib, sys
spec = sys.argv[1]
mod, _, attr = spec.partition(":")
obj = importlib.import_module(mod)
name = attr.removesuffix("()") or "application"
app = getattr(obj, name)
if attr.endswith("()"):
    app = app()
if not callable(app):
    sys.exit(f"{spec} is not a WSGI callable")
"""


def _as_app_user(app: dict[str, Any], cmd: str, env_file: str) -> str:
    """``cmd`` run in the release, as the app user, with the settings of ``env_file`` and its venv."""
    # The release's import path, as uWSGI's pythonpath has it (src layout included).
    path = ":".join(f"{app['release_dir']}/{sub}".rstrip("/") for sub in app["python_path"])
    inner = (f"set -a; . {q(env_file)}; set +a; "
             f"export APP_STATE_DIR={q(app['state_dir'])} APP_RELEASE={q(app['release'])} "
             f"PYTHONPATH={q(path)} "
             f"PATH={q(app['venv'] + '/bin')}:$PATH; {cmd}")
    return f"runuser -u {q(app['user'])} -- sh -c {q(inner)}"


def data_paths(app: dict[str, Any]) -> list[str]:
    """The app's data, relative to ``/srv/<app>/shared``: the state dir and each shared path."""
    return ["state", *app["shared_paths"]]


# Host side, as root: the data paths (argv[2:], relative to argv[1]) into the tar
# argv[0]'s "<out>.tmp", then renamed to <out> (complete or not at all). SQLite
# databases go through SQLite's online backup API: a consistent copy while the live
# release writes, which copying the file (and its -wal) byte by byte is not; their
# -wal/-shm/-journal files are then left out, the copy being whole.
SNAPSHOT = r"""
import os, sqlite3, sys, tarfile, tempfile
out, shared, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
os.chdir(shared)

def is_sqlite(path):
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\0"
    except OSError:
        return False

files = []
for top in paths:
    if not os.path.lexists(top):
        continue
    files.append(top)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        files += [os.path.join(dirpath, n) for n in dirnames + sorted(filenames)]
dbs = {f for f in files if not os.path.islink(f) and os.path.isfile(f) and is_sqlite(f)}
sidecars = {db + s for db in dbs for s in ("-wal", "-shm", "-journal")}
with tarfile.open(out + ".tmp", "w") as tar, tempfile.TemporaryDirectory() as scratch:
    for f in files:
        if f in sidecars:
            continue
        if f not in dbs:
            tar.add(f, recursive=False)
            continue
        copy = os.path.join(scratch, "db")
        src = sqlite3.connect(f"file:{f}?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(copy)
        with dst:
            src.backup(dst)
        dst.close(); src.close()
        info = tar.gettarinfo(f)
        info.size = os.path.getsize(copy)
        with open(copy, "rb") as fh:
            tar.addfile(info, fh)
        os.unlink(copy)
os.chmod(out + ".tmp", 0o600)
os.replace(out + ".tmp", out)
"""


def snapshot_cmd(app: dict[str, Any], snap: str) -> str:
    """Root shell: write the app's data to the tar ``snap`` (a shell word), complete or not
    at all; SQLite databases copied consistently even while the live release writes."""
    paths = " ".join(q(p) for p in data_paths(app))
    return (f"mkdir -p {q(app['snapshot_dir'])} && chmod 0700 {q(app['snapshot_dir'])} && "
            f"python3 -c {q(SNAPSHOT)} \"{snap}\" {q(app['root'] + '/shared')} {paths}")


def restore_cmd(app: dict[str, Any], snap: str) -> str:
    """Root shell: the app's data exactly as in the tar ``snap`` (a shell word)."""
    paths = " ".join(q(p) for p in data_paths(app))
    # The directories themselves stay: the service's mount namespace holds them
    # (ReadWritePaths=), so a new directory under the same name would be invisible to it.
    return (f"[ -s \"{snap}\" ] && cd {q(app['root'] + '/shared')} && "
            f"for p in {paths}; do [ ! -d \"$p\" ] || find \"$p\" -mindepth 1 -delete; done && "
            f"tar -xpf \"{snap}\"")


def apply(host: Host) -> None:
    rerun_setup = bool(host.vars.get("rerun_setup"))
    for app in apps.resolve(host):
        root, group, rel = app["root"], app["group"], app["release_dir"]
        # releases/ is traversable (0751) so nginx can serve static files from
        # the code; shared/ (settings, state) is closed to everyone but the app.
        files.directory(host, f"{root}/releases", owner="root", group=group, mode="0751")
        files.directory(host, f"{root}/shared", owner="root", group=group, mode="0750")
        files.directory(host, app["state_dir"], owner=app["user"], group=group, mode="0750")
        # The new settings go to a candidate file first: the checks below run
        # with them, and the live env file changes only once they pass.
        env = host.render("app.env.j2", app=app)
        candidate = app["env_file"] + ".candidate"
        files.file(host, candidate, env, owner="root", group=group, mode="0640", secret=True)
        # Shared paths are never uploaded: the host's copy is the data.
        files.tree(host, app["source"], rel, owner="root", group=group, name=rel,
                   exclude=tuple(app["shared_paths"]))
        files.file(host, f"{rel}/RELEASE", app["release"] + "\n", group=group)
        files.symlink(host, f"{rel}/.venv", f"../../venvs/{app['venv'].rsplit('/', 1)[1]}")
        for path in app["shared_paths"]:
            files.directory(host, f"{root}/shared/{path}", owner=app["user"], group=group,
                            mode="0750")
            files.symlink(host, f"{rel}/{path}", f"{root}/shared/{path}")
        if app["build"]:
            _build(host, app, candidate)
        # Each check runs again whenever what it depends on changes.
        code = _key(app["venv"], app["module"])
        _once(host, app, candidate, f"import-ok-{code}",
              f"python -c {q(IMPORT_CHECK)} {q(app['module'])}",
              f"import {app['module']} in release {app['release']}")
        # The settings' part of a marker's name stands alone: the first 12 characters
        # of the env file's sha256, so that a run that meets the file's new checksum
        # can foresee the markers' new names (keel.prefetch) and read them in a batch.
        settings = _key(env)
        # The data as the live release left it, before anything of the new one may
        # change it: restored if setup or pre_start fails, and by `fab rollback`.
        hooks = f"{settings}-{_key(*app['setup'], chr(0), *app['pre_start'])}"
        taken = f"{rel}/.keel-snapshot-{hooks}"  # holds the snapshot's path
        snap = (f"{app['snapshot_dir']}/{app['release']}.from-"
                f"$(basename \"$(readlink {q(app['code_dir'])} || echo none)\").tar")
        server.command(host, f"s={snap} && {snapshot_cmd(app, '$s')} && echo \"$s\" > {q(taken)}",
                       creates=None if rerun_setup else taken,
                       name=f"{app['name']}: snapshot of the data before release {app['release']}")
        if app["setup"]:
            done = f"{root}/shared/.keel-setup-done"
            cmd = " && ".join(f"( {c} )" for c in app["setup"])
            _guarded(host, app, candidate, cmd, taken, done, guard=not rerun_setup,
                     label=f"setup: {'; '.join(app['setup'])}")
        for cmd in app["pre_start"]:
            _guarded(host, app, candidate, cmd, taken, f"{rel}/.keel-pre-start-{settings}-{_key(cmd)}",
                     guard=True, label=cmd)
        # The new unit, ini and settings, started for real beside the live service.
        script, tested = uwsgi.canary(host, app, candidate)
        marker = f"{rel}/.keel-canary-ok-{settings}-{_key(code, tested)}"
        server.command(host, f"{script}\ntouch {q(marker)}", creates=marker,
                       name=f"{app['name']}: canary of release {app['release']}")
        # systemd reads the environment only when it starts the service.
        files.file(host, app["env_file"], env, owner="root", group=group, mode="0640",
                   secret=True, notify=f"restart {app['name']}", op_name="template")


def _build(host: Host, app: dict[str, Any], env_file: str) -> None:
    """The ``build`` commands, once per release: the release is the app user's while they
    run, then root's again and read-only to the app. A failed build removes the release
    (unless it is live), so the next deploy starts from a fresh upload."""
    rel, marker = app["release_dir"], f"{app['release_dir']}/.keel-built"
    owner, frozen = q(f"{app['user']}:{app['group']}"), q(f"root:{app['group']}")
    cmd = " && ".join(f"( {c} )" for c in app["build"])
    script = f"""chown -R {owner} {q(rel)}
if {_as_app_user(app, cmd, env_file)}; then ok=1; else ok=; fi
chown -R {frozen} {q(rel)} && chmod -R go-w {q(rel)}
if [ -z "$ok" ]; then
  [ "$(readlink -f {q(app['code_dir'])})" = {q(rel)} ] || rm -rf {q(rel)}
  exit 1
fi
touch {q(marker)}"""
    server.command(host, script, creates=marker, chdir=rel,
                   name=f"{app['name']}: build: {'; '.join(app['build'])}")


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _once(host: Host, app: dict[str, Any], env_file: str, marker: str, cmd: str, label: str) -> None:
    """Run ``cmd`` in the release as the app user, once: the marker is written only on success."""
    path = f"{app['release_dir']}/.keel-{marker}"
    server.command(host, _as_app_user(app, cmd, env_file) + f" && touch {q(path)}", creates=path,
                   chdir=app["release_dir"], name=f"{app['name']}: {label}")


def _guarded(host: Host, app: dict[str, Any], env_file: str, cmd: str, taken: str,
             marker: str, guard: bool, label: str) -> None:
    """Run ``cmd`` (which may change the data) in the release as the app user, then write
    ``marker`` (and skip it while ``marker`` exists, if ``guard``). On failure put the data
    back from the snapshot whose path ``taken`` holds, and say so on the last line."""
    restore = restore_cmd(app, "$s")
    script = f"""t=$(mktemp)
if {_as_app_user(app, cmd, env_file)} 2>"$t"; then cat "$t" >&2; rm -f "$t"; else
  cat "$t" >&2; why=$(grep -v '^[[:space:]]*$' "$t" | tail -n 1); rm -f "$t"; s=$(cat {q(taken)})
  ( {restore} ) || {{ echo "${{why:-failed}} (restoring the data from $s FAILED)" >&2; exit 1; }}
  echo "${{why:-failed}} (data restored as before)" >&2; exit 1
fi
echo "$(date -u +%FT%TZ) {app['release']}" > {q(marker)}"""
    server.command(host, script, creates=marker if guard else None, chdir=app["release_dir"],
                   name=f"{app['name']}: {label}")
