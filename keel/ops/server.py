"""Users, groups, SSH keys, the hostname, and guarded commands."""

from __future__ import annotations

from collections.abc import Sequence

from keel.operation import Change, Fail, NoChange, OpGenerator, Probe, operation, q


@operation
def group(name: str, system: bool = True) -> OpGenerator:
    """Group ``name`` exists. Example: ``group(host, "hello")``"""
    res = yield Probe(f"getent group {q(name)} || true")
    if res.out.strip():
        return NoChange("group exists")
    return Change([f"groupadd {'--system ' if system else ''}{q(name)}"], "created")


@operation
def user(
    name: str,
    group: str | None = None,
    groups: Sequence[str] = (),
    system: bool = True,
    shell: str | None = None,
    home: str | None = None,
    create_home: bool = False,
) -> OpGenerator:
    """User ``name`` exists with this primary group, shell and home, and is in ``groups``.

    Supplementary groups are added, never removed (as Ansible's ``append: yes``).
    ``shell`` and ``home`` are enforced on an existing user only when given; a new
    user gets ``/usr/sbin/nologin`` and ``/nonexistent`` if ``system``, else
    ``/bin/bash`` and ``/home/<name>``.

    Example: ``user(host, "hello", group="hello", shell="/usr/sbin/nologin", home="/srv/hello")``
    """
    res = yield Probe(f"getent passwd {q(name)} && id -gn {q(name)} && id -Gn {q(name)} || true")
    lines = res.out.splitlines()
    if not lines:
        args = ["useradd"]
        if system:
            args.append("--system")
        args += ["--shell", q(shell or ("/usr/sbin/nologin" if system else "/bin/bash")),
                 "--home-dir", q(home or ("/nonexistent" if system else f"/home/{name}"))]
        args.append("--create-home" if create_home else "--no-create-home")
        args += ["--gid", q(group)] if group else ["--user-group"]
        if groups:
            args += ["--groups", q(",".join(groups))]
        return Change([" ".join([*args, q(name)])], "created")
    if len(lines) < 3:
        return Fail(f"cannot read user {name}: {res.out.strip()}")
    fields = lines[0].split(":")
    cur_home, cur_shell = fields[5], fields[6]
    cur_group, cur_groups = lines[1].strip(), set(lines[2].split())
    mods, why = [], []
    if group and cur_group != group:
        mods += ["--gid", q(group)]
        why.append(f"group {cur_group} -> {group}")
    if shell and cur_shell != shell:
        mods += ["--shell", q(shell)]
        why.append(f"shell {cur_shell} -> {shell}")
    if home and cur_home != home:
        mods += ["--home", q(home)]
        why.append(f"home {cur_home} -> {home}")
    missing = [g for g in groups if g not in cur_groups]
    if missing:
        mods += ["--append", "--groups", q(",".join(missing))]
        why.append("added to " + ",".join(missing))
    if not mods:
        return NoChange("user as asked")
    return Change([" ".join(["usermod", *mods, q(name)])], "; ".join(why))


@operation
def authorized_key(user: str, key: str) -> OpGenerator:
    """``key`` (one public key line) is in ``user``'s ``~/.ssh/authorized_keys``."""
    key = key.strip()
    res = yield Probe(
        f'h=$(getent passwd {q(user)} | cut -d: -f6); echo "$h"; '
        f'grep -qxF {q(key)} "$h/.ssh/authorized_keys" 2>/dev/null && echo present || echo absent'
    )
    lines = res.out.splitlines()
    exists = bool(lines and lines[0])
    if exists and lines[-1] == "present":
        return NoChange("key present")
    # The home is looked up when the change runs: an earlier operation of the same
    # run may create the user (in check mode it does not exist yet).
    home = '"$h"'
    return Change([
        f'h=$(getent passwd {q(user)} | cut -d: -f6); '
        f'[ -n "$h" ] || {{ echo {q(f"user {user} does not exist")} >&2; exit 1; }}',
        f"install -d -m 700 -o {q(user)} -g $(id -gn {q(user)}) {home}/.ssh",
        # A last line without a newline would be joined to the key.
        f'if [ -s {home}/.ssh/authorized_keys ] && [ -n "$(tail -c 1 {home}/.ssh/authorized_keys)" ]; '
        f"then echo >> {home}/.ssh/authorized_keys; fi",
        f"printf '%s\\n' {q(key)} >> {home}/.ssh/authorized_keys",
        f"chown {q(user)}: {home}/.ssh/authorized_keys",
        f"chmod 600 {home}/.ssh/authorized_keys",
    ], "key added" if exists else f"key added (user {user} does not exist yet)")


@operation
def hostname(name: str) -> OpGenerator:
    """The host is called ``name`` (kernel hostname, /etc/hostname, /etc/hosts); only what differs is fixed.

    /etc/hosts is as asked when it has a ``127.0.1.1 <name>`` line and no other 127.0.1.1 line.
    """
    res = yield Probe(
        'echo "kernel=$(hostname)"; echo "file=$(cat /etc/hostname 2>/dev/null)"; '
        "grep '^127\\.0\\.1\\.1[[:space:]]' /etc/hosts || true"
    )
    kernel = file = ""
    hosts: list[str] = []  # the names after 127.0.1.1
    for line in res.out.splitlines():
        fields = line.split()
        if line.startswith("kernel="):
            kernel = line[7:].strip()
        elif line.startswith("file="):
            file = line[5:].strip()
        elif fields[:1] == ["127.0.1.1"]:
            hosts.append(fields[1] if len(fields) > 1 else "")
    cmds: list[str] = []
    why: list[str] = []
    if file != name:
        cmds.append(f"echo {q(name)} > /etc/hostname")
        why.append(f"/etc/hostname {file or '(none)'} -> {name}")
    if kernel != name:
        cmds.append(f"hostname {q(name)}")
        why = [f"{kernel or '?'} -> {name}"]  # the headline covers the file too
    if set(hosts) != {name}:
        cmds.append(f"sed -i '/^127.0.1.1[[:space:]]/d' /etc/hosts && "
                    f"printf '127.0.1.1\\t%s\\n' {q(name)} >> /etc/hosts")
        if kernel == name:
            why.append(f"/etc/hosts 127.0.1.1 {' '.join(hosts) or '(none)'} -> {name}")
    if not cmds:
        return NoChange("hostname as asked")
    return Change(cmds, "; ".join(why))


@operation
def command(
    cmd: str,
    creates: str | None = None,
    unless: str | None = None,
    chdir: str | None = None,
    user: str | None = None,
) -> OpGenerator:
    """Run ``cmd`` unless a guard says it is done: ``creates`` exists or ``unless`` succeeds.

    Without a guard it runs every time and reports a change.

    Example: ``command(host, "flask db upgrade", chdir="/srv/hello/current", user="hello")``
    """
    guards = []
    if creates:
        guards.append(f"[ -e {q(creates)} ]")
    if unless:
        guards.append(f"( {unless} ) >/dev/null 2>&1")
    run = cmd if not chdir else f"cd {q(chdir)} && {cmd}"
    if user:
        run = f"runuser -u {q(user)} -- sh -c {q(run)}"
    change = Change([run], "ran")
    if guards:
        res = yield Probe(" || ".join(guards) + " && echo done || echo todo", then=change)
        if res.out.strip() == "done":
            return NoChange("guard says done")
    return change
