"""The ``lab.*`` tasks: ``fab lab.up``, ``fab lab.down``, ``fab lab.status``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabric import task
from invoke import Collection, Exit

from keel import cli

if TYPE_CHECKING:
    from keel import lab as labmod


def _lab() -> labmod.Lab:
    from keel import lab as labmod  # imported when a lab task runs, not by every `fab`

    return labmod.Lab()


def _lab_error() -> type[Exception]:
    from keel.lab import LabError

    return LabError


@task(help={"count": "how many hosts (default 1)", "release": "bookworm or trixie"})
def up(c, count=1, release="bookworm"):
    """Start lab hosts (systemd-nspawn) and write inventory/lab.yml."""
    try:
        hosts = _lab().up(count=int(count), release=release)
    except _lab_error() as exc:
        raise Exit(f"lab.up: {exc}", code=1) from None
    inventory = _lab().write_inventory(cli.DEFAULT_INVENTORY)
    for h in hosts:
        print(f"{h.name}\t{h.address}\t{h.release}")
    print(f"inventory: {inventory}")


@task
def down(c):
    """Stop every lab host; remove its overlays, mounts, veths and nft rules."""
    try:
        _lab().down()
    except _lab_error() as exc:
        raise Exit(f"lab.down: {exc}", code=1) from None
    cli.DEFAULT_INVENTORY.unlink(missing_ok=True)
    print("lab is down")


@task
def status(c):
    """List lab hosts with address, state and uptime."""
    rows = _lab().status()
    if not rows:
        print("no lab hosts")
    for r in rows:
        print(f"{r['name']}\t{r['address']}\t{r['release']}\t{r['state']}\t{r['uptime']}")


@task
def url(c):
    """Print each lab host's URL and fetch it with curl from the controller."""
    hosts = _lab().hosts()
    if not hosts:
        raise Exit("lab.url: no lab hosts (run 'fab lab.up')", code=1)
    for h in hosts:
        address = f"http://{h.address}/"
        print(f"{h.name}: {address}")
        print(f"$ curl -s {address}version")
        c.run(f"curl -sS --max-time 5 {address}version", warn=True)
        print()


lab = Collection("lab", up, down, status, url)
