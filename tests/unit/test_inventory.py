"""Unit tests for keel.inventory on Ansible-style example inventories.

The fixtures under ``inventories/`` follow the examples of the Ansible inventory
guide. Example::

    inv = Inventory.load(FIXTURES / "usa" / "hosts.ini")
    assert names(inv.hosts("southeast:!atlanta")) == ["host3"]
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from keel.errors import KeelError
from keel.inventory import Group, HostSpec, Inventory, InventoryError

FIXTURES = Path(__file__).parent / "inventories"
SITE = FIXTURES / "site"
SITE_HOSTS = [
    "jumper",
    "www01.example.com",
    "www02.example.com",
    "www03.example.com",
    "web-a.example.com",
    "web-b.example.com",
    "db1.example.com",
    "db2.example.com",
]
WEB = SITE_HOSTS[1:6]


def names(specs: list[HostSpec]) -> list[str]:
    """Host names of ``specs``, in order."""
    return [spec.name for spec in specs]


def host(inv: Inventory, name: str) -> HostSpec:
    """The one HostSpec called ``name``."""
    (spec,) = inv.hosts(name)
    return spec


def write(folder: Path, name: str, text: str) -> Path:
    """Write a dedented file under ``folder`` and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(path: Path) -> str:
    """The message of the InventoryError raised by loading ``path``."""
    with pytest.raises(InventoryError) as caught:
        Inventory.load(path)
    return str(caught.value)


@pytest.fixture(scope="module")
def site() -> Inventory:
    return Inventory.load(SITE / "hosts.ini")


@pytest.fixture(scope="module")
def usa() -> Inventory:
    return Inventory.load(FIXTURES / "usa" / "hosts.ini")


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("source", ["hosts.ini", "hosts.yml"])
def test_basic_groups_hosts_and_ungrouped(source: str) -> None:
    inv = Inventory.load(FIXTURES / "basic" / source)
    assert names(inv.hosts()) == [
        "mail.example.com",
        "foo.example.com",
        "bar.example.com",
        "one.example.com",
        "two.example.com",
        "three.example.com",
    ]
    assert set(inv.groups) == {
        "all", "ungrouped", "webservers", "dbservers", "east", "west", "prod", "test",
    }
    assert inv.groups["ungrouped"].hosts == {"mail.example.com"}
    assert inv.groups["prod"].children == {"east"}
    # groups without a parent hang under 'all'
    assert inv.groups["all"].children == {"ungrouped", "webservers", "dbservers", "prod", "test"}
    mail = host(inv, "mail.example.com")
    assert mail.groups == ("all", "ungrouped")
    assert mail.vars["group_names"] == ["ungrouped"]
    foo = host(inv, "foo.example.com")
    assert foo.groups == ("all", "east", "prod", "webservers")
    assert foo.vars["group_names"] == ["east", "prod", "webservers"]
    assert foo.address == "foo.example.com"
    assert (foo.user, foo.port, foo.key_file) == (None, None, None)


def test_children_of_children(usa: Inventory) -> None:
    assert usa.groups["usa"].children == {"southeast", "northeast", "southwest", "northwest"}
    assert usa.groups["southeast"].children == {"atlanta", "raleigh"}
    assert usa.groups["southeast"].hosts == set()
    assert usa.groups["atlanta"].hosts == {"host1", "host2"}
    assert host(usa, "host2").groups == ("all", "atlanta", "raleigh", "southeast", "usa")
    assert names(usa.hosts("usa")) == ["host1", "host2", "host3", "host4"]
    assert usa.groups["southeast"].vars == {
        "some_server": "foo.southeast.example.com",
        "halon_system_timeout": 30,
        "self_destruct_countdown": 60,
        "escape_pods": 2,
    }


def test_magic_variables(site: Inventory) -> None:
    www = host(site, "www03.example.com")
    assert www.vars["inventory_hostname"] == "www03.example.com"
    assert www.vars["inventory_hostname_short"] == "www03"
    assert www.vars["group_names"] == ["prod", "staging", "webservers"]
    assert www.vars["inventory_file"] == str((SITE / "hosts.ini").resolve())
    assert www.vars["inventory_dir"] == str(SITE.resolve())
    ip = host(Inventory.load(FIXTURES / "ranges" / "hosts.ini"), "10.0.0.2")
    assert ip.vars["inventory_hostname_short"] == "10.0.0.2"


def test_connection_settings(site: Inventory) -> None:
    key = str(SITE.resolve() / "keys" / "deploy.pem")
    jumper = host(site, "jumper")
    assert (jumper.address, jumper.user, jumper.port, jumper.key_file) == (
        "192.0.2.50", "admin", 5555, key,
    )
    web = host(site, "web-a.example.com")
    assert (web.address, web.user, web.port) == ("web-a.example.com", "deploy", 2222)
    db = host(site, "db1.example.com")
    assert (db.address, db.user, db.port) == ("10.0.1.11", "admin", 2200)
    assert db.vars["ansible_become_password"] == "s3cr3t"
    assert db.vars["ansible_ssh_common_args"] == "-o StrictHostKeyChecking=no"
    assert db.vars["ansible_ssh_private_key_file"] == "keys/deploy.pem"


def test_ssh_aliases_and_which_wins(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, "hosts", """
        [legacy]
        old1 ansible_ssh_host=10.9.0.1 ansible_ssh_user=root ansible_ssh_port=2022
        both ansible_host=10.9.0.2 ansible_ssh_host=10.9.0.3 ansible_port=22 ansible_ssh_port=23
        """))
    old = host(inv, "old1")
    assert (old.address, old.user, old.port) == ("10.9.0.1", "root", 2022)
    both = host(inv, "both")
    assert (both.address, both.port) == ("10.9.0.2", 22)


def test_key_file_home_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ops")
    inv = Inventory.load(write(tmp_path, "hosts.yml", """
        all:
          hosts:
            a: {ansible_ssh_private_key_file: ~/.ssh/id_ed25519}
            b: {ansible_ssh_private_key_file: /etc/keel/key}
            c: {ansible_private_key_file: ../keys/c.pem}
        """))
    assert host(inv, "a").key_file == "/home/ops/.ssh/id_ed25519"
    assert host(inv, "b").key_file == "/etc/keel/key"
    assert host(inv, "c").key_file == str(tmp_path.parent.resolve() / "keys" / "c.pem")


def test_hostspec_is_frozen_and_hashable(site: Inventory) -> None:
    spec = host(site, "jumper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.port = 22  # type: ignore[misc]
    assert {spec, host(site, "jumper")} == {spec}
    assert isinstance(site.groups["webservers"], Group)


def test_group_priority_is_read_not_stored(site: Inventory) -> None:
    assert site.groups["dbservers"].priority == 10
    assert site.groups["webservers"].priority == 1
    assert "ansible_group_priority" not in host(site, "db1.example.com").vars


def test_lab_style_inventory(tmp_path: Path) -> None:
    hosts = {
        "lab-1": {
            "ansible_host": "10.77.0.11",
            "ansible_port": 22,
            "ansible_user": "keel",
            "ansible_ssh_private_key_file": "/var/lib/keel/lab/id_ed25519",
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/k -o StrictHostKeyChecking=yes",
        }
    }
    path = tmp_path / "lab.yml"
    doc = {"all": {"children": {"app": {"hosts": hosts}}}}
    path.write_text("# generated\n" + yaml.safe_dump(doc, sort_keys=False))
    spec = Inventory.load(path).hosts("app")[0]
    assert (spec.name, spec.address, spec.port, spec.user) == ("lab-1", "10.77.0.11", 22, "keel")
    assert spec.key_file == "/var/lib/keel/lab/id_ed25519"
    assert spec.groups == ("all", "app")


# ---------------------------------------------------------------- precedence
def test_precedence_all_parent_child_host(usa: Inventory) -> None:
    # all:vars 0 < usa 1 < southeast 2 < host1's inline 4
    assert host(usa, "host1").vars["escape_pods"] == 4
    assert host(usa, "host2").vars["escape_pods"] == 2
    assert host(usa, "host3").vars["escape_pods"] == 2
    assert host(usa, "host4").vars["escape_pods"] == 1
    assert host(usa, "host1").vars["ntp_server"] == "ntp.atlanta.example.com"
    assert host(usa, "host3").vars["ntp_server"] == "ntp.example.com"


def test_group_vars_file_beats_inventory_group_vars(site: Inventory) -> None:
    # [webservers:vars] http_port=80 < group_vars/webservers/main.yml 8080
    assert host(site, "www02.example.com").vars["http_port"] == 8080
    # [dbservers:vars] tier=db < group_vars/dbservers.yaml tier: database
    assert host(site, "db1.example.com").vars["tier"] == "database"
    assert site.groups["webservers"].vars["http_port"] == 8080
    assert site.groups["dbservers"].vars == {"tier": "database", "db_port": 5432}


def test_group_vars_all_file_beats_any_inventory_group_var(site: Inventory) -> None:
    # Ansible's order: every inventory-file group var < group_vars/all < group_vars/<group>.
    assert host(site, "www01.example.com").vars["ntp_server"] == "ntp.pool.example.org"
    assert host(site, "jumper").vars["timezone"] == "Etc/UTC"


def test_group_vars_files_follow_group_depth(site: Inventory) -> None:
    # staging (depth 1) has http_port 8000, webservers (depth 2) 8080: the deeper wins.
    assert host(site, "www03.example.com").vars["http_port"] == 8080
    assert host(site, "db2.example.com").vars["http_port"] == 8000
    assert host(site, "www03.example.com").vars["backups"] is False


def test_host_vars_file_beats_inline_host_vars(site: Inventory) -> None:
    db1 = host(site, "db1.example.com")
    assert db1.vars["ansible_host"] == "10.0.1.11"
    assert host(site, "www01.example.com").vars["http_port"] == 8081
    assert host(site, "jumper").vars["motd"] == "Authorized use only"


def test_group_vars_folder_merges_files_in_name_order(site: Inventory) -> None:
    web = host(site, "www02.example.com").vars
    assert web["doc_root"] == "/var/www/html"  # main.yml is read after extra.yml
    assert web["packages"] == ["nginx"]  # shallow merge: lists are replaced
    assert web["worker_processes"] == 4
    assert "this" not in web  # notes.txt is not a vars file


def test_same_depth_groups_ordered_by_name(site: Inventory) -> None:
    # prod and staging are both children of all: 'staging' sorts last and wins.
    assert host(site, "www03.example.com").vars["env"] == "staging"
    assert host(site, "www02.example.com").vars["env"] == "production"


def test_child_group_beats_parent_group(site: Inventory) -> None:
    assert host(site, "www01.example.com").vars["tier"] == "web"


@pytest.mark.parametrize("source", ["hosts.ini", "hosts.yml"])
def test_ansible_group_priority(source: str) -> None:
    inv = Inventory.load(FIXTURES / "priority" / source)
    shared = host(inv, "shared.example.com").vars
    assert shared["server"] == "apache"  # priority 10 beats 'nginx', which sorts later
    assert shared["color"] == "green"  # equal priority: 'beta' sorts after 'alpha'
    assert inv.groups["apache"].priority == 10
    # depth first: a child group beats its parent whatever the priorities
    assert host(inv, "deep.example.com").vars["level"] == "child"


def test_priority_in_group_vars_file_is_a_plain_variable(tmp_path: Path) -> None:
    write(tmp_path, "group_vars/web.yml", "ansible_group_priority: 50\n")
    inv = Inventory.load(write(tmp_path, "hosts.ini", "[web]\nweb1\n"))
    assert inv.groups["web"].priority == 1
    assert host(inv, "web1").vars["ansible_group_priority"] == 50


def test_later_host_definition_updates_host_vars(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, "hosts.ini", """
        [web]
        app1 role=web color=red
        [worker]
        app1 role=worker
        """))
    assert host(inv, "app1").vars["role"] == "worker"
    assert host(inv, "app1").vars["color"] == "red"


# ----------------------------------------------------------- INI value types
def test_ini_host_line_literals() -> None:
    v = host(Inventory.load(FIXTURES / "literals" / "hosts.ini"), "app1.example.com").vars
    assert v["port_int"] == 8080
    assert v["flag_true"] is True
    assert v["flag_yes"] == "yes"
    assert v["flag_lower"] == "true"
    assert v["quoted_num"] == "8080"  # "'8080'": shlex drops "", literal_eval drops ''
    assert v["dq_num"] == 8080  # "8080": shlex drops the quotes, then it is a number
    assert v["list_val"] == [1, 2]
    assert v["dict_val"] == {"a": 1}
    assert v["none_val"] is None
    assert v["float_val"] == 1.5
    assert v["spaced"] == "hello world"
    assert v["octal"] == "0755"
    assert v["expr"] == "10-5"
    assert v["path"] == "/etc/app.conf"
    assert v["secret"] == "03#pa33w0rd"
    assert v["tail"] == "x"  # an unquoted '#' starts a comment on a host line


def test_ini_group_vars_literals() -> None:
    v = host(Inventory.load(FIXTURES / "literals" / "hosts.ini"), "app1.example.com").vars
    assert v["v_int"] == 42
    assert v["v_false"] is False
    assert v["v_upper"] == "FALSE"
    assert v["v_str"] == "quoted"
    assert v["v_spaces"] == "spaced out value"
    assert v["v_comment"] == 23
    assert v["v_text"] == "some text # kept, as in Ansible"
    assert v["v_empty"] == ""


# -------------------------------------------------------------------- ranges
def test_host_ranges() -> None:
    inv = Inventory.load(FIXTURES / "ranges" / "hosts.ini")
    assert names(inv.hosts("webservers")) == [f"www0{i}.example.com" for i in (1, 2, 3)]
    assert names(inv.hosts("databases")) == ["db-a.example.com", "db-b.example.com",
                                             "db-c.example.com"]
    assert names(inv.hosts("stride")) == ["node0.lan", "node4.lan", "node8.lan"]
    assert names(inv.hosts("racks")) == [
        "rack1-nodea.dc1", "rack1-nodeb.dc1", "rack2-nodea.dc1", "rack2-nodeb.dc1",
    ]
    lan = inv.hosts("lan")
    assert names(lan) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert {spec.user for spec in lan} == {"ops"}


def test_ipv6_hosts() -> None:
    inv = Inventory.load(FIXTURES / "ranges" / "hosts.ini")
    assert names(inv.hosts("v6")) == ["2001:db8::10", "2001:db8::11"]
    assert host(inv, "2001:db8::11").port == 2222
    assert host(inv, "2001:db8::10").port is None


def test_ranges_in_yaml_keys(site: Inventory) -> None:
    yml = Inventory.load(SITE / "hosts.yml")
    assert names(yml.hosts("webservers")) == WEB
    assert host(yml, "web-b.example.com").port == 2222


# --------------------------------------------------------- YAML/INI parity
@pytest.mark.parametrize("example", ["basic", "usa", "site", "priority"])
def test_yaml_and_ini_give_identical_hostspecs(example: str) -> None:
    ini = Inventory.load(FIXTURES / example / "hosts.ini").hosts()
    yml = Inventory.load(FIXTURES / example / "hosts.yml").hosts()

    def comparable(spec: HostSpec) -> HostSpec:
        # inventory_file names the file itself; everything else must match
        rest = {k: v for k, v in spec.vars.items() if k != "inventory_file"}
        return dataclasses.replace(spec, vars=rest)

    assert [comparable(s) for s in ini] == [comparable(s) for s in yml]


# ---------------------------------------------------------------- directory
def test_directory_inventory() -> None:
    inv = Inventory.load(FIXTURES / "multi")
    assert names(inv.hosts()) == [
        "web1.example.com", "web2.example.com", "db1.example.com", "cache1.example.com",
    ]
    assert inv.groups["app"].children == {"web", "db", "cache"}
    web1 = host(inv, "web1.example.com")
    assert web1.groups == ("all", "app", "web")
    assert web1.vars["dns_server"] == "10.1.0.53"
    assert web1.vars["app_port"] == 9000  # host_vars/web1.example.com.json
    web2 = host(inv, "web2.example.com").vars
    assert (web2["app_name"], web2["app_port"], web2["db_password"]) == ("shop", 8001, "changeme")
    assert host(inv, "db1.example.com").address == "10.1.0.21"


def test_extensionless_yaml_is_detected(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, "production", """
        # YAML without an extension
        all:
          children:
            web:
              hosts:
                web1:
        """))
    assert names(inv.hosts("web")) == ["web1"]


def test_json_inventory(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text('{"web": {"hosts": {"web1": {"ansible_port": 2200}}, "vars": {"a": 1}}}')
    spec = host(Inventory.load(path), "web1")
    assert (spec.port, spec.vars["a"], spec.groups) == (2200, 1, ("all", "web"))


def test_yaml_shorthand_and_empty_sections(tmp_path: Path) -> None:
    inv = Inventory.load(write(tmp_path, "hosts.yml", """
        web:
          hosts: web1
          vars:
        db:
        all:
          vars:
            x: !unsafe "{{ not templated }}"
        """))
    assert names(inv.hosts()) == ["web1"]
    assert "db" in inv.groups
    assert host(inv, "web1").vars["x"] == "{{ not templated }}"


def test_empty_inventory_file(tmp_path: Path) -> None:
    assert Inventory.load(write(tmp_path, "hosts.yml", "# nothing yet\n")).hosts() == []
    assert Inventory.load(write(tmp_path, "hosts.ini", "# nothing yet\n")).hosts() == []


# ------------------------------------------------------------------ patterns
@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (None, SITE_HOSTS),
        ("all", SITE_HOSTS),
        ("*", SITE_HOSTS),
        ("webservers", WEB),
        ("jumper", ["jumper"]),
        ("ungrouped", ["jumper"]),
        ("webservers,dbservers", SITE_HOSTS[1:]),
        ("webservers:dbservers", SITE_HOSTS[1:]),
        ("dbservers, webservers", SITE_HOSTS[1:]),  # always inventory order
        ("jumper,db2.example.com", ["jumper", "db2.example.com"]),
        ("all,!dbservers", SITE_HOSTS[:6]),
        ("all:!prod", ["jumper"]),
        ("!dbservers", SITE_HOSTS[:6]),
        ("prod,&staging", ["www03.example.com", "db2.example.com"]),
        ("webservers:&staging", ["www03.example.com"]),
        ("&staging", ["www03.example.com", "db2.example.com"]),
        ("webservers:!staging:!web-a.example.com", [*SITE_HOSTS[1:3], "web-b.example.com"]),
        ("www*", SITE_HOSTS[1:4]),
        ("web*", WEB),
        ("*.example.com", SITE_HOSTS[1:]),
        ("db?.example.com", ["db1.example.com", "db2.example.com"]),
        ("www0[12].example.com", SITE_HOSTS[1:3]),
        ("~db[12]\\.", ["db1.example.com", "db2.example.com"]),
        ("~(jump|web-a)", ["jumper", "web-a.example.com"]),
        ("stag*", ["www03.example.com", "db2.example.com"]),
    ],
)
def test_patterns(site: Inventory, pattern: str | None, expected: list[str]) -> None:
    assert names(site.hosts(pattern)) == expected


def test_pattern_with_ipv6_host_name() -> None:
    inv = Inventory.load(FIXTURES / "ranges" / "hosts.ini")
    assert names(inv.hosts("2001:db8::10")) == ["2001:db8::10"]


def test_empty_group_matches_no_host(usa: Inventory) -> None:
    assert usa.hosts("southwest") == []


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("dbx", "--limit: no host or group matches 'dbx'"),
        ("webservers,dbx", "--limit: no host or group matches 'dbx'"),
        ("all,!dbx", "--limit: no host or group matches 'dbx'"),
        ("webservers:&prodx", "--limit: no host or group matches 'prodx'"),
        ("cache*", "--limit: no host or group matches 'cache*'"),
        ("WEBSERVERS", "--limit: no host or group matches 'WEBSERVERS'"),
        ("", "--limit: empty host pattern"),
        ("all,!", "--limit: empty host pattern"),
        ("~web(", "--limit: invalid regex '~web(': missing ), unterminated subpattern "
                  "at position 3"),
    ],
)
def test_pattern_errors(site: Inventory, pattern: str, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        site.hosts(pattern)
    assert str(caught.value) == message


# ----------------------------------------------------------------- ad-hoc -H
def test_from_hosts() -> None:
    inv = Inventory.from_hosts(["deploy@web1:2222", "10.0.0.7,db1", "[2001:db8::5]:22", "::1"])
    assert names(inv.hosts()) == ["web1", "10.0.0.7", "db1", "2001:db8::5", "::1"]
    web1 = host(inv, "web1")
    assert (web1.address, web1.user, web1.port, web1.key_file) == ("web1", "deploy", 2222, None)
    assert web1.groups == ("all", "ungrouped")
    assert web1.vars["group_names"] == ["ungrouped"]
    assert host(inv, "2001:db8::5").port == 22
    assert (host(inv, "db1").user, host(inv, "db1").port) == (None, None)
    assert names(inv.hosts("web1,db1")) == ["web1", "db1"]
    assert Inventory.from_hosts([]).hosts() == []
    assert names(Inventory.from_hosts(["a", "a"]).hosts()) == ["a"]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (["web1:abc"], "--hosts: invalid port in 'web1:abc'"),
        (["web1:70000"], "--hosts: invalid port in 'web1:70000'"),
        (["@web1"], "--hosts: empty user in '@web1'"),
        (["deploy@"], "--hosts: invalid host 'deploy@'"),
        (["web1", "root@web1"], "--hosts: host 'web1' given twice"),
    ],
)
def test_from_hosts_errors(hosts: list[str], message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        Inventory.from_hosts(hosts)
    assert str(caught.value) == message


# -------------------------------------------------------------------- errors
def test_error_is_a_keel_error() -> None:
    assert issubclass(InventoryError, KeelError)


def test_missing_inventory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    assert error_of(missing) == f"inventory: no such file: {missing}"


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yml", """
        all:
          hosts:
            web1: ansible_host: 10.0.0.1
        """)
    assert error_of(path) == f"{path}:3: mapping values are not allowed here"


def test_malformed_yaml_missing_colon(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yml", """
        all:
          hosts:
            web1:
              ansible_host: 10.0.0.1
            web2
              ansible_host: 10.0.0.2
        """)
    assert error_of(path) == f"{path}:6: could not find expected ':'"


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.yml", "- web1\n- web2\n")
    assert error_of(path) == (
        f"{path}: expected a mapping of groups at the top level, got a list"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "web:\n  hosts:\n    - web1\n",
            "2: 'hosts' of group 'web' must be a mapping, got a list",
        ),
        (
            "all:\n  children:\n    web:\n      host:\n        web1:\n",
            "4: group 'web' has unknown key 'host' (expected hosts, children or vars)",
        ),
        (
            "all:\n  children:\n    web: web1\n",
            "3: group 'web' must be a mapping of hosts, children and vars, got a string",
        ),
        (
            "web:\n  hosts:\n    web1: 10.0.0.1\n",
            "3: vars of host 'web1' must be a mapping, got a string",
        ),
        (
            "web:\n  hosts:\n    web1:\n      ansible_port: ssh\n",
            "4: ansible_port must be an integer port number, got 'ssh'",
        ),
        (
            "web:\n  vars:\n    ansible_group_priority: high\n",
            "3: ansible_group_priority must be an integer, got 'high'",
        ),
        (
            "web:\n  hosts:\n    web1:\n      password: !vault |\n        $ANSIBLE_VAULT;1.1\n",
            "4: !vault value: not an ansible-vault envelope",
        ),
        (
            "plugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n",
            "1: inventory plugin configuration is not supported",
        ),
    ],
)
def test_yaml_structure_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "hosts.yml", text)
    assert error_of(path) == f"{path}:{message}"


def test_json_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text('{\n  "web": {\n    "hosts": {"web1": }\n  }\n}\n')
    assert error_of(path) == f"{path}:3: Expecting value"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[web servers]\nweb1\n", "1: invalid section header '[web servers]'"),
        ("[web]\nweb1\n[web:child]\napp\n", "3: section [web:child] has unknown type 'child'"),
        ("[web]\nweb1\n\n[web:vars]\nhttp_port 80\n",
         "5: expected key=value in [web:vars], got 'http_port 80'"),
        ("[web]\nweb1 ansible_host\n", "2: expected key=value host variable, got 'ansible_host'"),
        ("[web]\nweb1 motd=\"hello\n",
         "2: cannot parse host line 'web1 motd=\"hello': No closing quotation"),
        ("# hosts\n[web]\nweb1\nweb2 ansible_port=abc\n",
         "4: ansible_port must be an integer port number, got 'abc'"),
        ("[web]\nweb1:ssh\n", "2: invalid port in host 'web1:ssh'"),
        ("[web]\nweb1:\n", "2: invalid host 'web1:': ':' must be followed by a port number"),
        ("[web:vars]\nansible_ssh_port=0\n[web]\n",
         "2: ansible_ssh_port must be an integer port number, got '0'"),
        ("[db:vars]\nansible_group_priority=high\n[db]\n",
         "2: ansible_group_priority must be an integer, got 'high'"),
        ("[usa:children]\nsoutheast\nnortheast\n[southeast]\nhost1\n",
         "3: section [usa:children] includes undefined group 'northeast'"),
        ("[web]\nweb1\n[db:vars]\nport=5432\n", "3: section [db:vars] is for undefined group 'db'"),
        ("[web:children]\nweb apps\n",
         "2: expected a group name in [web:children], got 'web apps'"),
        ("---\nall:\n  hosts:\n", "1: '---' starts YAML; name YAML inventories *.yml"),
    ],
)
def test_ini_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "hosts.ini", text)
    assert error_of(path) == f"{path}:{message}"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("web[3:1]", "'[3:1]' in 'web[3:1]': begin is greater than end"),
        ("web[01:3]", "'[01:3]' in 'web[01:3]': begin and end must have the same number of digits"),
        ("web[1]", "'[1]' in 'web[1]': expected [begin:end] or [begin:end:step]"),
        ("web[1:]", "'[1:]' in 'web[1:]': missing end"),
        ("web[1:4:0]", "'[1:4:0]' in 'web[1:4:0]': step must be a positive integer"),
        ("web[a:3]", "'[a:3]' in 'web[a:3]': bounds must be two numbers or two letters"),
        ("web[c:a]", "'[c:a]' in 'web[c:a]': begin is greater than end"),
    ],
)
def test_bad_ranges(tmp_path: Path, line: str, why: str) -> None:
    path = write(tmp_path, "hosts.ini", f"[web]\n{line}\n")
    assert error_of(path) == f"{path}:2: invalid host range {why}"


def test_unbalanced_range_bracket(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.ini", "[web]\nweb[1:3\n")
    assert error_of(path) == f"{path}:2: invalid host range in 'web[1:3': unbalanced brackets"


def test_ini_children_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.ini", """
        [web:children]
        app

        [app:children]
        web
        """)
    # reported where the edge closing the loop is declared ('web' under 'app')
    assert error_of(path) == f"{path}:5: group cycle: web -> app -> web"


def test_yaml_children_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.yml", """
        all:
          children:
            web:
              children:
                app:
            app:
              children:
                web:
        """)
    assert error_of(path) == f"{path}:5: group cycle: app -> web -> app"


def test_cycle_through_all(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.ini", "[web:children]\nall\n")
    assert error_of(path) == f"{path}:2: group cycle: all -> web -> all"


def test_recursive_yaml_alias_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts.yml", """
        all:
          children:
            web: &web
              children:
                web: *web
        """)
    assert error_of(path) == f"{path}:5: group cycle: web -> web"


def test_bad_group_vars_file(tmp_path: Path) -> None:
    write(tmp_path, "hosts.ini", "[web]\nweb1\n")
    bad = write(tmp_path, "group_vars/web/main.yml", "http_port: 80\n  docroot: /var/www\n")
    assert error_of(tmp_path / "hosts.ini") == f"{bad}:2: mapping values are not allowed here"


def test_group_vars_file_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "hosts.ini", "[web]\nweb1\n")
    bad = write(tmp_path, "group_vars/web.yml", "- http_port: 80\n")
    assert error_of(tmp_path / "hosts.ini") == f"{bad}: expected a mapping of variables, got a list"


def test_bad_port_in_host_vars_file(tmp_path: Path) -> None:
    write(tmp_path, "hosts.ini", "[web]\nweb1\n")
    bad = write(tmp_path, "host_vars/web1.yml", "---\nansible_port: twenty-two\n")
    assert error_of(tmp_path / "hosts.ini") == (
        f"{bad}:2: ansible_port must be an integer port number, got 'twenty-two'"
    )


def test_corrupt_vault_encrypted_vars_file(tmp_path: Path) -> None:
    """Decryption itself is tested in test_vault.py, on files made by ansible-vault."""
    write(tmp_path, "hosts.ini", "[web]\nweb1\n")
    vault = write(tmp_path, "group_vars/all/vault.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    assert error_of(tmp_path / "hosts.ini") == (
        f"{vault}: corrupt vault body (not the hex of salt, HMAC and ciphertext)"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_bytes(b"[web]\nweb1 motd=caf\xe9\n")
    assert error_of(path) == f"{path}:2: not valid UTF-8"


def test_directory_with_broken_file(tmp_path: Path) -> None:
    write(tmp_path, "inv/01-ok.ini", "[web]\nweb1\n")
    bad = write(tmp_path, "inv/02-bad.ini", "[db]\ndb1 port\n")
    assert error_of(tmp_path / "inv") == f"{bad}:2: expected key=value host variable, got 'port'"


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yml", "all:\n  vars:\n    motd: \"unterminated\n")
    message = error_of(path)
    assert "\n" not in message
    assert message == f"{path}:4: found unexpected end of stream"
