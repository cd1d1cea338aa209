"""Read Ansible inventories (INI and YAML) and select hosts with Ansible host patterns.

Example::

    inv = Inventory.load("inventory/hosts.ini")
    for spec in inv.hosts("webservers,!staging"):
        print(spec.name, spec.address, spec.port, spec.vars["http_port"])

Behaviour follows ansible-core's ``ini`` and ``yaml`` inventory plugins, its
``host_group_vars`` vars plugin and its variable manager:

* INI values, on host lines *and* in ``[group:vars]`` sections, go through
  ``ast.literal_eval`` and fall back to the raw text: ``8080`` is an int,
  ``True`` a bool, ``yes``/``true``/``FALSE`` stay strings. The Ansible docs say
  ``:vars`` values are strings, but the plugin's code evaluates them too (for
  example ``x=False`` is a bool there); the code is what users' inventories rely
  on, so it wins. Host lines are split with ``shlex`` first (quotes removed, a
  ``#`` starts a comment), so ``a="8080"`` is an int and ``a="'8080'"`` a string.
  A ``:vars`` line is ``key = rest of line``: a trailing ``# note`` is dropped
  only when the rest still parses as a literal (``x=23 # n`` -> 23, ``x=a # n``
  -> ``'a # n'``), exactly as in Ansible.
* Precedence, lowest first (Ansible's default): inventory-file vars of ``all``,
  then of the host's other groups; then ``group_vars/all``, then group_vars
  files of the other groups; then inventory-file host vars, then ``host_vars``
  files; then ``inventory_hostname``, ``inventory_hostname_short`` and
  ``group_names``. Groups are ordered by (depth below ``all``,
  ``ansible_group_priority``, name); the last one wins. As in Ansible, any
  group_vars *file* (even ``all``) beats any inventory-file group var.
* ``ansible_group_priority`` is read from inventory files only (as in Ansible);
  in a group_vars file it is an ordinary variable.
* ``group_names`` lists every group of the host but ``all`` (``ungrouped``
  included). ``inventory_file``/``inventory_dir`` name the first file that
  declared the host, as in Ansible.
* Connection settings: ``ansible_host`` then ``ansible_ssh_host``; ``ansible_user``
  then ``ansible_ssh_user``; ``ansible_port`` then ``ansible_ssh_port``;
  ``ansible_private_key_file`` then ``ansible_ssh_private_key_file`` (the first
  one set wins, as in ansible-core's ssh plugin). Ports must be integers
  1-65535 wherever they are set; that is checked when the file is read.
* An INI ``[group:children]`` entry or ``[group:vars]`` section must name a
  group declared somewhere in the same file (or an earlier file), as in Ansible.
* Stricter than Ansible (which warns and skips): unknown keys in a YAML group,
  non-mapping groups, files in an inventory directory that do not parse, and
  host patterns matching nothing are errors. ``!unsafe`` values load as plain
  strings.
* Ansible Vault (``keel/vault.py``): group_vars/host_vars files encrypted whole
  with ``ansible-vault`` and ``!vault`` values anywhere in YAML are decrypted
  while loading, with the password of :class:`keel.vault.Passwords` (asked for
  only when something is encrypted). Every decrypted string is a
  :class:`keel.vault.Secret`, masked in output. A wrong password or a corrupt
  body is an error naming the file (and line). Encrypted inventory files
  themselves are an error: encrypt the vars files instead.
* Host patterns: ``,`` or ``:`` separated; ``!x`` excludes, ``&x`` intersects,
  ``*``/``?``/``[...]`` globs and ``~regex`` match group and host names. Results
  come in inventory order (the order hosts were first declared). Subscripts
  such as ``web[0]`` are not supported.
* A directory inventory loads every file in it, recursively in name order,
  skipping hidden files, ``group_vars``/``host_vars``/``vars_plugins`` and the
  extensions Ansible ignores (``~ .orig .retry .cfg .md .txt .rst .bak .swp
  .pyc .pyo .rpm``). ``group_vars``/``host_vars`` are read next to the inventory
  file, or inside the inventory directory.
* ``.yml``/``.yaml``/``.json`` files are YAML (JSON via ``json``); any other
  extension is INI; a file without extension is YAML when its first content
  line is ``---``, ``{`` or a bare ``name:`` key, else INI.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import ipaddress
import itertools
import json
import os
import re
import shlex
import string
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from keel.errors import KeelError
from keel.vault import Passwords, Secret, VaultError, decrypt, is_encrypted

__all__ = ["Group", "HostSpec", "Inventory", "InventoryError"]

YAML_SUFFIXES = (".yml", ".yaml", ".json")
IGNORED_NAMES = frozenset({"group_vars", "host_vars", "vars_plugins"})
IGNORED_SUFFIXES = (
    "~", ".orig", ".retry", ".cfg", ".md", ".txt", ".rst", ".bak", ".swp", ".pyc", ".pyo", ".rpm",
)
HOST_VARS = ("ansible_host", "ansible_ssh_host")
USER_VARS = ("ansible_user", "ansible_ssh_user")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
KEY_VARS = ("ansible_private_key_file", "ansible_ssh_private_key_file")
PRIORITY_VAR = "ansible_group_priority"
LIMIT = "--limit"
ADHOC = "--hosts"

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:[#;].*)?$")
_RANGE = re.compile(r"\[([^\[\]]*)\]")
_BRACKETED_V6 = re.compile(r"^\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::(\d+))?$")
_PATTERN_TERMS = re.compile(r"(?:[^:\[\]]|\[[^\]]*\])+")
_YAML_START = re.compile(r"^(?:---|\{|[\w.-]+:\s*(?:#.*)?$)")

Locate = Callable[[Any], str]


class InventoryError(KeelError):
    """One-line message naming the file and line when known.

    Example: ``inventory/bad.yml:7: mapping values are not allowed here``.
    """


@dataclass
class Group:
    """A group of the inventory.

    ``hosts`` are its direct members, ``children`` its direct child groups,
    ``vars`` its inventory-file vars overlaid with its group_vars files, and
    ``priority`` its ``ansible_group_priority`` (default 1). Example:
    ``inv.groups["southeast"].children == {"atlanta", "raleigh"}``.
    """

    name: str
    hosts: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)
    vars: dict[str, Any] = field(default_factory=dict)
    priority: int = 1


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to reach and configure one host.

    Example: ``HostSpec(name="web1", address="10.0.0.5", user="deploy", port=22,
    key_file=None, groups=("all", "web"), vars={...})``. ``vars`` is left out of
    the hash; treat it as read-only.
    """

    name: str
    address: str
    user: str | None
    port: int | None
    key_file: str | None
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(hash=False)


@dataclass
class _Host:
    """A host while loading: its sources and its two layers of host vars."""

    name: str
    source: Path | None
    vars: dict[str, Any] = field(default_factory=dict)
    file_vars: dict[str, Any] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)


class Inventory:
    """Groups and hosts read from an Ansible inventory.

    Example::

        inv = Inventory.load("inventory/")        # a file or a directory
        inv.hosts("web*:&prod")                   # -> [HostSpec, ...]
        Inventory.from_hosts(["deploy@10.0.0.5:2222"]).hosts()
    """

    def __init__(self, path: Path, passwords: Passwords | None = None) -> None:
        self.path = path
        self.passwords = passwords or Passwords()
        self.groups: dict[str, Group] = {}
        self._inline: dict[str, dict[str, Any]] = {}
        self._group_files: dict[str, dict[str, Any]] = {}
        self._hosts: dict[str, _Host] = {}
        self._edges: dict[tuple[str, str], str] = {}
        self._members: dict[str, set[str]] = {}
        self._specs: dict[str, HostSpec] = {}
        self._group("all")
        self._group("ungrouped")

    # ------------------------------------------------------------------ public
    @classmethod
    def load(cls, path: str | Path, passwords: Passwords | None = None) -> Inventory:
        """Read an inventory file or directory, with its group_vars/ and host_vars/.

        ``passwords`` opens vault-encrypted content (default: the password file
        in ``$ANSIBLE_VAULT_PASSWORD_FILE``, else a prompt on a terminal).
        Example: ``Inventory.load("inventory/hosts.ini").hosts("dbservers")``.
        """
        given = Path(path)
        if not given.exists():
            raise InventoryError(f"inventory: no such file: {path}")
        inv = cls(given, passwords)
        if given.is_dir():
            for source in _directory_sources(given):
                inv._parse_file(source)
            inv._finalize(given)
        else:
            inv._parse_file(given)
            inv._finalize(given.parent)
        return inv

    @classmethod
    def from_hosts(cls, hosts: list[str]) -> Inventory:
        """Build an inventory of ad-hoc hosts given as ``[user@]host[:port]``.

        Entries may also be comma-separated lists. Example:
        ``Inventory.from_hosts(["deploy@web1:2222", "10.0.0.7"])``.
        """
        inv = cls(Path.cwd())
        seen: dict[str, str] = {}
        for entry in hosts:
            for item in (part.strip() for part in entry.split(",")):
                if not item:
                    continue
                user, name, port = _parse_host_string(item)
                if name in seen:
                    if seen[name] != item:
                        raise InventoryError(f"{ADHOC}: host '{name}' given twice")
                    continue
                seen[name] = item
                host = inv._host(name, None)
                host.groups.add("ungrouped")
                inv.groups["ungrouped"].hosts.add(name)
                if user is not None:
                    host.vars["ansible_user"] = user
                if port is not None:
                    host.vars["ansible_port"] = port
        inv._finalize(None)
        return inv

    def hosts(self, pattern: str | None = None) -> list[HostSpec]:
        """Hosts matching an Ansible host pattern, in inventory order.

        ``None`` or ``"all"`` selects every host. Example:
        ``inv.hosts("webservers:dbservers:!staging")``; an unknown name raises
        ``InventoryError("--limit: no host or group matches 'dbx'")``.
        """
        if pattern is None:
            return list(self._specs.values())
        selected = self._select(pattern)
        return [spec for name, spec in self._specs.items() if name in selected]

    # ----------------------------------------------------------- building blocks
    def _group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name)
            self._inline[name] = {}
        return group

    def _host(self, name: str, source: Path | None) -> _Host:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = _Host(name, source)
            if source is not None:
                absolute = Path(os.path.abspath(source))
                host.vars["inventory_file"] = str(absolute)
                host.vars["inventory_dir"] = str(absolute.parent)
        return host

    def _add_child(self, parent: str, child: str, loc: str) -> None:
        self._group(parent).children.add(child)
        self._group(child)
        self._edges.setdefault((parent, child), loc)

    def _set_group_var(self, group: str, key: str, value: Any, loc: str) -> None:
        if key == PRIORITY_VAR:
            self._group(group).priority = _priority(value, loc)
        else:
            self._inline[group][key] = value

    def _add_hosts(
        self, pattern: str, group: str, host_vars: dict[Any, Any], loc: str, source: Path,
        locate: Locate,
    ) -> None:
        """Declare the hosts of ``pattern`` (ranges, ``:port``) as members of ``group``."""
        names, port = _expand_host_pattern(pattern, loc)
        _check_vars(host_vars, locate)
        plain = {str(k): v for k, v in host_vars.items()}
        for name in names:
            host = self._host(name, source)
            host.groups.add(group)
            self._group(group).hosts.add(name)
            if port is not None:
                host.vars["ansible_port"] = port
            host.vars.update(plain)

    # ---------------------------------------------------------------- parsing
    def _parse_file(self, path: Path) -> None:
        text = _read_text(path)
        if is_encrypted(text):
            raise InventoryError(f"{path}:1: ansible-vault encrypted inventory files are not "
                                 "supported (encrypt group_vars/host_vars files instead)")
        if _looks_like_yaml(path, text):
            if path.suffix == ".json":
                data, where = _load_json(path, text)
            else:
                data, where = _load_yaml(path, text, self.passwords)
            self._parse_yaml(path, data, where)
        else:
            self._parse_ini(path, text)

    def _parse_ini(self, path: Path, text: str) -> None:
        group, kind = "ungrouped", "hosts"
        declared = set(self.groups)
        pending: dict[str, str] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            loc = f"{path}:{lineno}"
            header = _SECTION.match(line)
            if header:
                group, kind = header.group(1), header.group(2) or "hosts"
                if kind not in ("hosts", "children", "vars"):
                    raise InventoryError(
                        f"{loc}: section [{group}:{kind}] has unknown type '{kind}'"
                    )
                self._group(group)
                if kind != "vars":
                    declared.add(group)
                elif group not in declared:
                    pending.setdefault(
                        group, f"{loc}: section [{group}:vars] is for undefined group '{group}'"
                    )
                continue
            if line.startswith("[") and line.endswith("]"):
                raise InventoryError(f"{loc}: invalid section header '{line}'")
            if kind == "hosts":
                self._ini_host_line(path, line, group, loc)
            elif kind == "vars":
                key, sep, value = line.partition("=")
                key = key.strip()
                if not sep or not key:
                    raise InventoryError(
                        f"{loc}: expected key=value in [{group}:vars], got '{line}'"
                    )
                value = _literal(value.strip())
                _check_vars({key: value}, lambda _key, loc=loc: loc)
                self._set_group_var(group, key, value, loc)
            else:
                match = _GROUP_NAME.match(line)
                if not match:
                    raise InventoryError(
                        f"{loc}: expected a group name in [{group}:children], got '{line}'"
                    )
                child = match.group(1)
                if child not in declared:
                    pending.setdefault(
                        child,
                        f"{loc}: section [{group}:children] includes undefined group '{child}'",
                    )
                self._add_child(group, child, loc)
        for name, message in pending.items():
            if name not in declared:
                raise InventoryError(message)

    def _ini_host_line(self, path: Path, line: str, group: str, loc: str) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{loc}: cannot parse host line '{line}': {exc}") from None
        if not tokens:
            return
        if tokens[0] == "---":
            raise InventoryError(f"{loc}: '---' starts YAML; name YAML inventories *.yml")
        host_vars: dict[Any, Any] = {}
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise InventoryError(f"{loc}: expected key=value host variable, got '{token}'")
            host_vars[key] = _literal(value)
        self._add_hosts(tokens[0], group, host_vars, loc, path, lambda _key: loc)

    def _parse_yaml(self, path: Path, data: Any, where: _Where) -> None:
        if data is None:
            return
        if not isinstance(data, dict):
            raise InventoryError(
                f"{path}: expected a mapping of groups at the top level, got {_kind(data)}"
            )
        if "plugin" in data:
            raise InventoryError(
                f"{where(data, 'plugin')}: inventory plugin configuration is not supported"
            )
        for name, body in data.items():
            self._yaml_group(path, where, data, name, body, None, ())

    def _yaml_group(
        self, path: Path, where: _Where, parent_map: dict[Any, Any], name: Any, body: Any,
        parent: str | None, stack: tuple[str, ...],
    ) -> None:
        loc = where(parent_map, name)
        name = str(name)
        if name in stack:
            cycle = " -> ".join((*stack[stack.index(name):], name))
            raise InventoryError(f"{loc}: group cycle: {cycle}")
        if body is not None and not isinstance(body, dict):
            raise InventoryError(
                f"{loc}: group '{name}' must be a mapping of hosts, children and vars, "
                f"got {_kind(body)}"
            )
        self._group(name)
        if parent is not None:
            self._add_child(parent, name, loc)
        for key, value in (body or {}).items():
            key_loc = where(body, key)
            if key not in ("hosts", "children", "vars"):
                raise InventoryError(
                    f"{key_loc}: group '{name}' has unknown key '{key}' "
                    "(expected hosts, children or vars)"
                )
            if isinstance(value, str):
                value = {value: None}  # Ansible's shorthand: 'hosts: web1'
            if value is None:
                continue
            if not isinstance(value, dict):
                raise InventoryError(
                    f"{key_loc}: '{key}' of group '{name}' must be a mapping, got {_kind(value)}"
                )
            if key == "vars":
                _check_vars(value, partial(where, value))
                for var, val in value.items():
                    self._set_group_var(name, str(var), val, where(value, var))
            elif key == "children":
                for child, child_body in value.items():
                    self._yaml_group(path, where, value, child, child_body, name, (*stack, name))
            else:
                for pattern, host_vars in value.items():
                    host_loc = where(value, pattern)
                    if host_vars is None:
                        host_vars = {}
                    if not isinstance(host_vars, dict):
                        raise InventoryError(
                            f"{host_loc}: vars of host '{pattern}' must be a mapping, "
                            f"got {_kind(host_vars)}"
                        )
                    self._add_hosts(
                        str(pattern), name, host_vars, host_loc, path, partial(where, host_vars)
                    )

    # ------------------------------------------------------------- finishing
    def _finalize(self, base: Path | None) -> None:
        """Link groups under ``all``, check cycles, read vars dirs, build the HostSpecs."""
        groups = self.groups
        parents: dict[str, set[str]] = {name: set() for name in groups}
        for group in groups.values():
            for child in group.children:
                parents[child].add(group.name)
        for name in groups:
            if name != "all" and not parents[name]:
                groups["all"].children.add(name)
                parents[name].add("all")
        self._check_cycles()

        for host in self._hosts.values():
            if host.groups - {"all", "ungrouped"}:
                host.groups.discard("ungrouped")
                groups["ungrouped"].hosts.discard(host.name)
            else:
                host.groups.add("ungrouped")
                groups["ungrouped"].hosts.add(host.name)
            host.groups.discard("all")
            groups["all"].hosts.discard(host.name)

        if base is not None:
            for name in groups:
                self._group_files[name] = _read_vars(base / "group_vars", name, self.passwords)
            for host in self._hosts.values():
                host.file_vars = _read_vars(base / "host_vars", host.name, self.passwords)
        for name, group in groups.items():
            group.vars = {**self._inline[name], **self._group_files.get(name, {})}

        depth: dict[str, int] = {}
        ancestors: dict[str, frozenset[str]] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = 0 if name == "all" else 1 + max(depth_of(p) for p in parents[name])
            return depth[name]

        def ancestors_of(name: str) -> frozenset[str]:
            if name not in ancestors:
                found = {name}
                for parent in parents[name]:
                    found |= ancestors_of(parent)
                ancestors[name] = frozenset(found)
            return ancestors[name]

        def members_of(name: str) -> set[str]:
            if name not in self._members:
                found = set(groups[name].hosts)
                for child in groups[name].children:
                    found |= members_of(child)
                self._members[name] = found
            return self._members[name]

        for name in groups:
            members_of(name)
        self._members["all"] = set(self._hosts)

        for host in self._hosts.values():
            names: set[str] = {"all"}
            for group_name in host.groups:
                names |= ancestors_of(group_name)
            ordered = sorted(
                (groups[n] for n in names if n != "all"),
                key=lambda g: (depth_of(g.name), g.priority, g.name),
            )
            merged: dict[str, Any] = dict(self._inline["all"])
            for group in ordered:
                merged.update(self._inline[group.name])
            merged.update(self._group_files.get("all", {}))
            for group in ordered:
                merged.update(self._group_files.get(group.name, {}))
            merged.update(host.vars)
            merged.update(host.file_vars)
            merged.update(
                inventory_hostname=host.name,
                inventory_hostname_short=_short_name(host.name),
                group_names=sorted(names - {"all"}),
            )
            self._specs[host.name] = _make_spec(host, tuple(sorted(names)), merged)

    def _check_cycles(self) -> None:
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(name: str) -> None:
            state[name] = 1
            stack.append(name)
            for child in sorted(self.groups[name].children):
                if state.get(child) == 1:
                    cycle = [*stack[stack.index(child):], child]
                    edges = list(itertools.pairwise(cycle))
                    known = [self._edges[e] for e in reversed(edges) if e in self._edges]
                    where = known[0] if known else str(self.path)
                    raise InventoryError(f"{where}: group cycle: {' -> '.join(cycle)}")
                if child not in state:
                    visit(child)
            stack.pop()
            state[name] = 2

        for name in self.groups:
            if name not in state:
                visit(name)

    # ---------------------------------------------------------------- patterns
    def _select(self, pattern: str) -> set[str]:
        terms = _split_pattern(pattern, self._specs)
        if not terms:
            raise InventoryError(f"{LIMIT}: empty host pattern")
        union = [t for t in terms if t[0] not in "!&"] or ["all"]
        selected: set[str] = set()
        for term in union:
            selected |= self._match(term)
        for term in terms:
            if term[0] == "&":
                selected &= self._match(term[1:])
        for term in terms:
            if term[0] == "!":
                selected -= self._match(term[1:])
        return selected

    def _match(self, term: str) -> set[str]:
        term = term.strip()
        if not term:
            raise InventoryError(f"{LIMIT}: empty host pattern")
        if term == "all":
            return set(self._hosts)
        test: Callable[[str], bool]
        if term.startswith("~"):
            try:
                regex = re.compile(term[1:])
            except re.error as exc:
                raise InventoryError(f"{LIMIT}: invalid regex '{term}': {exc}") from None
            test = partial(_regex_matches, regex)
        elif any(c in term for c in "*?["):
            test = partial(_glob_matches, term)
        else:
            test = term.__eq__
        found: set[str] = set()
        matched = False
        for name in self.groups:
            if test(name):
                matched = True
                found |= self._members[name]
        for name in self._hosts:
            if test(name):
                matched = True
                found.add(name)
        if not matched:
            raise InventoryError(f"{LIMIT}: no host or group matches '{term}'")
        return found


# ====================================================================== helpers
class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of each mapping key (by mapping id)."""

    def __init__(self, stream: str, path: Path | None = None,
                 passwords: Passwords | None = None) -> None:
        super().__init__(stream)
        self.key_lines: dict[int, dict[Any, int]] = {}
        self.path = path
        self.passwords = passwords or Passwords()


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Iterable[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    data.update(loader.construct_mapping(node))
    lines: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        lines.setdefault(key, key_node.start_mark.line + 1)
    loader.key_lines[id(data)] = lines


def _construct_unsafe(loader: _LineLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


def _construct_vault(loader: _LineLoader, node: yaml.Node) -> Secret:
    where = f"{loader.path}:{node.start_mark.line + 1}"
    if not isinstance(node, yaml.ScalarNode):
        raise InventoryError(f"{where}: a !vault value must be a string (an ansible-vault block)")
    envelope = loader.construct_scalar(node)
    try:
        return Secret(decrypt(envelope, loader.passwords.get))
    except VaultError as exc:
        raise InventoryError(f"{where}: !vault value: {exc}") from None


class _FastLineLoader(getattr(yaml, "CSafeLoader", _LineLoader)):  # type: ignore[misc]
    """The same on libyaml's parser (in PyYAML's wheels): several times faster. Its
    error messages differ, so a file it rejects is parsed again by _LineLoader."""

    def __init__(self, stream: str, path: Path | None = None,
                 passwords: Passwords | None = None) -> None:
        super().__init__(stream)
        self.key_lines: dict[int, dict[Any, int]] = {}
        self.path = path
        self.passwords = passwords or Passwords()


for _loader in (_LineLoader, _FastLineLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    _loader.add_constructor("!unsafe", _construct_unsafe)
    _loader.add_constructor("!vault", _construct_vault)


class _Where:
    """Formats ``file:line`` for a key of a loaded mapping (``file`` alone if unknown)."""

    def __init__(self, path: Path, key_lines: dict[int, dict[Any, int]]) -> None:
        self.path = path
        self.key_lines = key_lines

    def __call__(self, mapping: Any, key: Any) -> str:
        line = self.key_lines.get(id(mapping), {}).get(key)
        return f"{self.path}:{line}" if line else str(self.path)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InventoryError(f"{path}:{line}: not valid UTF-8") from None
    return text


def _load_yaml(path: Path, text: str, passwords: Passwords | None = None) -> tuple[Any, _Where]:
    fast = _FastLineLoader(text, path, passwords)
    try:
        return fast.get_single_data(), _Where(path, fast.key_lines)
    except yaml.YAMLError:
        pass  # parsed again below, for the usual message
    finally:
        fast.dispose()
    loader = _LineLoader(text, path, passwords)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InventoryError(f"{where}: {_one_line(problem)}") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: {_one_line(str(exc))}") from None
    finally:
        loader.dispose()
    return data, _Where(path, loader.key_lines)


def _load_json(path: Path, text: str) -> tuple[Any, _Where]:
    try:
        data = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise InventoryError(f"{path}:{exc.lineno}: {exc.msg}") from None
    return data, _Where(path, {})


def _looks_like_yaml(path: Path, text: str) -> bool:
    if path.suffix in YAML_SUFFIXES:
        return True
    if path.suffix:
        return False
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return bool(_YAML_START.match(line))
    return False


def _directory_sources(folder: Path) -> list[Path]:
    """Inventory files under ``folder``, in name order, skipping what Ansible skips."""
    found: list[Path] = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry in IGNORED_NAMES or entry.endswith(IGNORED_SUFFIXES):
            continue
        full = folder / entry
        if full.is_dir():
            found.extend(_directory_sources(full))
        elif full.is_file():
            found.append(full)
    return found


def _vars_files(folder: Path, name: str) -> list[Path]:
    """Ansible's lookup: ``name`` (file or folder), else ``name.yml|.yaml|.json``."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        return []
    exact = folder / name
    if exact.is_dir():
        return _vars_folder_files(exact)
    if exact.is_file():
        return [exact]
    for suffix in YAML_SUFFIXES:
        candidate = folder / (name + suffix)
        if candidate.is_file():
            return [candidate]
    return []


def _vars_folder_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        full = folder / entry
        if full.is_dir():
            found.extend(_vars_folder_files(full))
        elif full.is_file() and (not full.suffix or full.suffix in YAML_SUFFIXES):
            found.append(full)
    return found


def _read_vars(folder: Path, name: str, passwords: Passwords | None = None) -> dict[str, Any]:
    """Merge the vars files for one group or host, in order (later files win).

    A file encrypted whole with ansible-vault is decrypted first, and every
    string in it becomes a :class:`Secret`.
    """
    merged: dict[str, Any] = {}
    for path in _vars_files(folder, name):
        text = _read_text(path)
        encrypted = is_encrypted(text)
        if encrypted:
            try:
                text = decrypt(text, (passwords or Passwords()).get)
            except VaultError as exc:
                raise InventoryError(f"{path}: {exc}") from None
        if path.suffix == ".json":
            data, where = _load_json(path, text)
        else:
            data, where = _load_yaml(path, text, passwords)
        if encrypted:
            data = _as_secrets(data)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise InventoryError(f"{path}: expected a mapping of variables, got {_kind(data)}")
        _check_vars(data, partial(where, data))
        merged.update({str(k): v for k, v in data.items()})
    return merged


def _as_secrets(obj: Any) -> Any:
    """Every string value (not key) of decrypted data, as a :class:`Secret`."""
    if isinstance(obj, dict):
        return {k: _as_secrets(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_secrets(v) for v in obj]
    return Secret(obj) if isinstance(obj, str) else obj


def _check_vars(variables: dict[Any, Any], locate: Locate) -> None:
    """Reject port variables that are not port numbers, naming where they were set."""
    for key in PORT_VARS:
        value = variables.get(key)
        if value is not None and _port(value) is None:
            raise InventoryError(
                f"{locate(key)}: {key} must be an integer port number, got '{value}'"
            )


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        value = int(value)
    if isinstance(value, int) and 0 < value < 65536:
        return value
    return None


def _priority(value: Any, loc: str) -> int:
    if not isinstance(value, bool):
        try:
            return int(str(value).strip())
        except ValueError:
            pass
    raise InventoryError(f"{loc}: {PRIORITY_VAR} must be an integer, got '{value}'")


def _literal(text: str) -> Any:
    """Parse an INI value as Ansible does: a Python literal if possible, else the text.

    Example: ``_literal("8080") == 8080``, ``_literal("yes") == "yes"``,
    ``_literal("'01'") == "01"``, ``_literal("[1, 2]") == [1, 2]``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    """Turn literal_eval results into YAML-like data (tuples and sets become lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return [_plain(v) for v in sorted(value, key=repr)]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, complex):
        return str(value)
    if value is Ellipsis:
        return "..."
    return value


def _expand_host_pattern(pattern: str, loc: str) -> tuple[list[str], int | None]:
    """Split an optional ``:port`` and expand ``[a:b]`` ranges.

    Example: ``_expand_host_pattern("web[1:2].lan:2222", loc) ==
    (["web1.lan", "web2.lan"], 2222)``.
    """
    pattern = pattern.strip()
    port: int | None = None
    v6 = _BRACKETED_V6.match(pattern)
    if v6 and ("::" in v6.group(1) or v6.group(1).count(":") >= 7):
        name = v6.group(1)
        port_text = v6.group(2)
        if port_text is not None:
            port = _port(port_text)
            if port is None:
                raise InventoryError(f"{loc}: invalid port in host '{pattern}'")
        return [name], port
    depth, colons = 0, []
    for index, char in enumerate(pattern):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == ":" and depth == 0:
            colons.append(index)
    name = pattern
    if len(colons) == 1:
        name, port_text = pattern[: colons[0]], pattern[colons[0] + 1 :]
        if not port_text:
            raise InventoryError(
                f"{loc}: invalid host '{pattern}': ':' must be followed by a port number"
            )
        port = _port(port_text)
        if port is None:
            raise InventoryError(f"{loc}: invalid port in host '{pattern}'")
    if not name:
        raise InventoryError(f"{loc}: empty host name")
    return _expand_ranges(name, pattern, loc), port


def _expand_ranges(name: str, pattern: str, loc: str) -> list[str]:
    match = _RANGE.search(name)
    if match is None:
        if "[" in name or "]" in name:
            raise InventoryError(f"{loc}: invalid host range in '{pattern}': unbalanced brackets")
        return [name]
    spec = match.group(1)

    def fail(why: str) -> InventoryError:
        return InventoryError(f"{loc}: invalid host range '[{spec}]' in '{pattern}': {why}")

    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise fail("expected [begin:end] or [begin:end:step]")
    begin, end = parts[0] or "0", parts[1]
    if not end:
        raise fail("missing end")
    step_text = parts[2] if len(parts) == 3 else "1"
    if not step_text.isdigit() or int(step_text) < 1:
        raise fail("step must be a positive integer")
    step = int(step_text)
    values: list[str]
    if begin.isdigit() and end.isdigit():
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(end) != width:
            raise fail("begin and end must have the same number of digits")
        if int(begin) > int(end):
            raise fail("begin is greater than end")
        values = [str(i).zfill(width) for i in range(int(begin), int(end) + 1, step)]
    elif len(begin) == 1 and len(end) == 1 and begin.isalpha() and end.isalpha():
        first, last = string.ascii_letters.find(begin), string.ascii_letters.find(end)
        if first < 0 or last < 0:
            raise fail("letters must be ASCII")
        if first > last:
            raise fail("begin is greater than end")
        values = list(string.ascii_letters[first : last + 1 : step])
    else:
        raise fail("bounds must be two numbers or two letters")
    head, tail = name[: match.start()], name[match.end() :]
    expanded: list[str] = []
    for value in values:
        expanded.extend(_expand_ranges(head + value + tail, pattern, loc))
    return expanded


def _parse_host_string(item: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]``; IPv6 as ``[addr]:port`` or a bare address."""
    user: str | None = None
    rest = item
    if "@" in item:
        user, _, rest = item.rpartition("@")
        if not user:
            raise InventoryError(f"{ADHOC}: empty user in '{item}'")
    port_text: str | None = None
    v6 = _BRACKETED_V6.match(rest)
    if v6:
        name, port_text = v6.group(1), v6.group(2)
    elif rest.count(":") == 1:
        name, port_text = rest.split(":")
    else:
        name = rest
    if not name or any(c.isspace() for c in name):
        raise InventoryError(f"{ADHOC}: invalid host '{item}'")
    port = None
    if port_text is not None:
        port = _port(port_text)
        if port is None:
            raise InventoryError(f"{ADHOC}: invalid port in '{item}'")
    return user, name, port


def _split_pattern(pattern: str, hosts: Iterable[str]) -> list[str]:
    """Split a host pattern on commas, else on colons outside ``[...]``."""
    pattern = pattern.strip()
    if pattern in hosts:
        return [pattern]
    parts = pattern.split(",") if "," in pattern else _PATTERN_TERMS.findall(pattern)
    return [part.strip() for part in parts if part.strip()]


def _regex_matches(regex: re.Pattern[str], name: str) -> bool:
    return regex.match(name) is not None


def _glob_matches(glob: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, glob)


def _first(variables: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = variables.get(key)
        if value is not None:
            return value
    return None


def _short_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.split(".")[0]
    return name


def _make_spec(host: _Host, groups: tuple[str, ...], merged: dict[str, Any]) -> HostSpec:
    address = _first(merged, HOST_VARS)
    user = _first(merged, USER_VARS)
    port = _first(merged, PORT_VARS)
    key = _first(merged, KEY_VARS)
    key_file = None
    if key is not None and str(key):
        key_file = os.path.expanduser(str(key))
        if not os.path.isabs(key_file):
            base = host.source.parent if host.source is not None else Path.cwd()
            key_file = os.path.normpath(os.path.join(os.path.abspath(base), key_file))
    return HostSpec(
        name=host.name,
        address=str(address) if address not in (None, "") else host.name,
        user=str(user) if user is not None else None,
        port=_port(port) if port is not None else None,
        key_file=key_file,
        groups=groups,
        vars=copy.deepcopy(merged),
    )


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    for kind, label in names.items():
        if isinstance(value, kind):
            return label
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
