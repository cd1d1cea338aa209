"""Files, templates, directories, symlinks and directory trees.

Every write goes to a temp file in the destination's directory and is renamed
into place, so a reader sees the old file or the new one, never half of each.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.operation import Change, Fail, NoChange, OpGenerator, Probe, Result, operation, q

if TYPE_CHECKING:
    from keel.host import Host

MAX_DIFF_BYTES = 256 * 1024
#: Up to this size a file's content rides with its probe when the probe's answer is
#: not at hand (one round trip for probe and write); a larger file waits for the answer.
MAX_RIDING_BYTES = 64 * 1024
#: On the file probe's output "$g": the content must be written (absent, or no "same").
_CONTENT_DIFFERS = """case "$g" in notfile|*'
same') false ;; *) true ;; esac"""


def _mode(mode: str | int) -> str:
    """Normalise a mode to octal digits without a leading zero: ``"0640" -> "640"``."""
    return format(int(str(mode), 8) if isinstance(mode, str) else mode, "o")


@operation
def directory(
    path: str, owner: str = "root", group: str = "root", mode: str = "0755"
) -> OpGenerator:
    """A directory with owner, group and mode; parents are created as needed.

    Special bits (setuid, setgid, sticky) are added when ``mode`` asks for them
    but never removed (GNU chmod keeps a directory's setuid and setgid bits under
    a numeric mode): ``2755`` is as asked for ``0755``.

    Example: ``directory(host, "/srv/hello", owner="root", group="hello", mode="0750")``
    """
    res = yield Probe(f"stat -c '%F|%U|%G|%a' {q(path)} 2>/dev/null || echo absent")
    state = res.out.strip()
    chown = f"chown {q(owner)}:{q(group)} {q(path)}"
    if state == "absent":
        return Change([f"mkdir -p {q(path)}", chown, f"chmod {_mode(mode)} {q(path)}"], "created")
    kind, cur_owner, cur_group, cur_mode = state.split("|")
    if kind != "directory":
        return Fail(f"{path} exists and is a {kind}, not a directory")
    want, cur = int(_mode(mode), 8), int(cur_mode, 8)
    if (cur_owner, cur_group) == (owner, group) and cur & (want | 0o777) == want:
        return NoChange("directory as asked")
    new_mode = format(want | cur & 0o7000, "o")  # special bits already set are kept
    return Change([chown, f"chmod {new_mode} {q(path)}"],
                  f"owner/mode {cur_owner}:{cur_group} {cur_mode} -> {owner}:{group} {new_mode}")


def _file_probe(path: str, want_sha: str) -> str:
    p = q(path)
    return f"""p={p}
if [ -f "$p" ] && [ ! -L "$p" ]; then
  stat -c '%U|%G|%a' "$p"
  s=$(sha256sum < "$p"); s=${{s%% *}}; echo "$s"
  if [ "$s" = {want_sha} ]; then echo same
  elif [ "$(stat -c %s "$p")" -gt {MAX_DIFF_BYTES} ]; then echo large
  else printf 'b64:'; base64 -w0 "$p"; echo; fi
elif [ -e "$p" ] || [ -L "$p" ]; then echo notfile
else echo absent; fi"""


@operation
def file(
    path: str,
    content: str | bytes,
    owner: str = "root",
    group: str = "root",
    mode: str = "0644",
    validate: str | None = None,
    secret: bool = False,
) -> OpGenerator:
    """A regular file with exactly ``content``, uploaded only when its sha256 differs.

    ``validate`` is a command run on the temp file before it replaces the live
    one, with ``%s`` standing for the temp file's path (``"nginx -t -c %s"``);
    if it fails the live file is left as it was. ``secret`` hides the diff.

    Example: ``file(host, "/etc/motd", "hello\\n", mode="0644")``
    """
    data = content.encode() if isinstance(content, str) else content
    want = hashlib.sha256(data).hexdigest()
    write = _write_commands(path, owner, group, mode, validate)
    # The write may ride with the probe (see Probe.then): when the file is absent or its
    # content differs, which the probe tells by printing no "same" line (nor "notfile").
    ride = Change(write, "", stdin=data) if len(data) <= MAX_RIDING_BYTES else None
    res = yield Probe(_file_probe(path, want), then=ride, when=_CONTENT_DIFFERS)
    lines = res.out.splitlines()
    state = lines[0] if lines else "absent"
    if state == "notfile":
        return Fail(f"{path} exists and is not a regular file")
    if state == "absent":
        return Change(write, "created", _diff(path, b"", data), stdin=data, secret=secret)
    cur_owner, cur_group, cur_mode = state.split("|")
    cur_sha = lines[1] if len(lines) > 1 else ""
    if cur_sha != want:
        old = lines[2] if len(lines) > 2 else ""
        diff = (_diff(path, base64.b64decode(old[4:]), data) if old.startswith("b64:")
                else "(old content too large to diff)" if old == "large"
                else "(old content unreadable)")
        return Change(write, "content changed", diff, stdin=data, secret=secret)
    if (cur_owner, cur_group, cur_mode) != (owner, group, _mode(mode)):
        return Change(
            [f"chown {q(owner)}:{q(group)} {q(path)}", f"chmod {_mode(mode)} {q(path)}"],
            f"owner/mode {cur_owner}:{cur_group} {cur_mode} -> {owner}:{group} {_mode(mode)}",
        )
    return NoChange("content and mode as asked")


def _write_commands(
    path: str, owner: str, group: str, mode: str, validate: str | None
) -> list[str]:
    d = q(os.path.dirname(path) or "/")
    cmds = [
        f"t=$(mktemp {d}/.keel.XXXXXX)",
        "trap 'rm -f \"$t\"' EXIT",
        'cat > "$t"',
        f'chown {q(owner)}:{q(group)} "$t"',
        f'chmod {_mode(mode)} "$t"',
    ]
    if validate:
        check = validate.replace("%s", '"$t"')
        cmds.append(
            f'if ! out=$( {{ {check}\n}} 2>&1); then '
            # The first line naming an error says most; else the last line.
            'line=$(printf "%s\\n" "$out" | grep -iE "emerg|error|fatal|invalid" | head -n 1); '
            f'echo "validation failed: ${{line:-$(printf "%s" "$out" | tail -n 1)}}" >&2; exit 1; fi'
        )
    cmds.append(f'mv -f "$t" {q(path)}')
    return cmds


def _diff(path: str, old: bytes, new: bytes) -> str:
    try:
        a, b = old.decode(), new.decode()
    except UnicodeDecodeError:
        return "(binary content differs)"
    return "".join(
        difflib.unified_diff(
            a.splitlines(keepends=True), b.splitlines(keepends=True),
            fromfile=f"{path} (before)", tofile=f"{path} (after)",
        )
    )


def template(
    host: Host,
    src: str,
    dest: str,
    *,
    owner: str = "root",
    group: str = "root",
    mode: str = "0644",
    validate: str | None = None,
    secret: bool = False,
    notify: str | list[str] | None = None,
    **extra: Any,
) -> Result:
    """Render Jinja2 template ``src`` (StrictUndefined) and manage ``dest`` like :func:`file`.

    Example::

        template(host, "uwsgi.ini.j2", "/etc/uwsgi-apps/hello.ini", app=app,
                 notify="restart hello")
    """
    content = host.render(src, **extra)
    return file(host, dest, content, owner=owner, group=group, mode=mode, validate=validate,
                secret=secret, notify=notify, op_name="template")


@operation
def symlink(path: str, target: str) -> OpGenerator:
    """``path`` is a symlink pointing at ``target``; replaced atomically if it points elsewhere.

    Example: ``symlink(host, "/etc/nginx/sites-enabled/hello", "../sites-available/hello")``
    """
    p = q(path)
    res = yield Probe(f"readlink {p} || {{ [ -e {p} ] && echo '//not-a-link'; }} || true")
    current = res.out.rstrip("\n")
    if current == target:
        return NoChange(f"already points to {target}")
    if current == "//not-a-link":
        return Fail(f"{path} exists and is not a symlink")
    tmp = q(f"{path}.keel-tmp")
    cmds = [f"ln -sfn {q(target)} {tmp}", f"mv -Tf {tmp} {p}"]
    return Change(cmds, f"{current} -> {target}" if current else "created", before=current)


@operation
def absent(path: str) -> OpGenerator:
    """Nothing exists at ``path`` (file, link or directory tree)."""
    p = q(path)
    res = yield Probe(f"[ -e {p} ] || [ -L {p} ] && echo present || echo absent")
    if res.out.strip() == "absent":
        return NoChange("already absent")
    return Change([f"rm -rf {p}"], "removed")


def tree_digest(local_dir: Path, exclude: tuple[str, ...] = ()) -> str:
    """A digest of a directory's paths, modes and contents (stable across machines)."""
    h = hashlib.sha256()
    for path in _walk(local_dir, exclude):
        rel = path.relative_to(local_dir).as_posix()
        h.update(f"{rel}\0{path.stat().st_mode & 0o111 and 1}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


_SKIP = {"__pycache__", ".git", ".venv", ".pytest_cache"}


def _walk(root: Path, exclude: tuple[str, ...]) -> list[Path]:
    """Files under ``root``, minus caches and the ``exclude`` paths (relative to ``root``)."""
    excluded = {e.strip("/") for e in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP and (rel / d).as_posix() not in excluded)
        for name in sorted(filenames):
            if (name not in _SKIP and (rel / name).as_posix() not in excluded
                    and not name.endswith((".pyc", ".pyo"))):
                out.append(Path(dirpath) / name)
    return out


def _tarball(local_dir: Path, exclude: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in _walk(local_dir, exclude):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(local_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


TREE_MARKER = ".keel-tree"


@operation
def tree(
    local_dir: str | Path,
    remote_dir: str,
    owner: str = "root",
    group: str = "root",
    exclude: tuple[str, ...] = (),
) -> OpGenerator:
    """``remote_dir`` holds exactly the files of ``local_dir`` (minus the ``exclude`` paths,
    relative to it); replaced as a whole.

    A digest of the local tree and the owner are kept in ``remote_dir/.keel-tree``
    (``<digest> <owner>:<group>``); when both match, nothing is sent. When only
    the owner differs the tree is chowned; otherwise a tarball is unpacked beside
    the target and swapped in by rename.

    Example: ``tree(host, "app/", "/srv/hello/releases/3f2a9c/")``
    """
    local = Path(local_dir)
    if not local.is_dir():
        return Fail(f"local directory {local} does not exist")
    digest = tree_digest(local, exclude)
    dest = remote_dir.rstrip("/")
    marker = f"{digest} {owner}:{group}"
    res = yield Probe(f"cat {q(dest + '/' + TREE_MARKER)} 2>/dev/null || true")
    if res.out.strip() == marker:
        return NoChange("tree up to date")
    cur_digest, _, cur_owner = res.out.strip().partition(" ")
    if cur_digest == digest:  # a marker without an owner (older keel) is chowned once
        return Change([f"chown -R {q(owner)}:{q(group)} {q(dest)}",
                       f"echo {q(marker)} > {q(dest + '/' + TREE_MARKER)}"],
                      f"owner {cur_owner or 'unknown'} -> {owner}:{group}")
    new, old = q(dest + ".keel-new"), q(dest + ".keel-old")
    cmds = [
        f"rm -rf {new} {old}",
        f"mkdir -p {new}",
        # tar's last line is only "Exiting with failure status": report the cause.
        f"err=$(tar -xzf - -C {new} --no-same-owner 2>&1) || {{ printf '%s\\n' \"$err\" | "
        "grep -v 'Exiting with failure status' | tail -n 1 >&2; exit 1; }",
        f"echo {q(marker)} > {new}/{TREE_MARKER}",
        f"chown -R {q(owner)}:{q(group)} {new}",
        f"if [ -e {q(dest)} ]; then mv -T {q(dest)} {old}; fi",
        f"mv -T {new} {q(dest)}",
        f"rm -rf {old}",
    ]
    n = len(_walk(local, exclude))
    return Change(cmds, f"{n} files uploaded", stdin=_tarball(local, exclude))
