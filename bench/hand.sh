#!/bin/sh
# The apt and pip commands of a fresh deploy, run by hand over one SSH session:
# the floor a fresh converge is compared with (bench/provision.py). It prepends
# REQUIREMENTS='...' (the app's pinned requirements plus uwsgi) and PIP_FLAGS='...'
# (keel's own, from keel/ops/python.py) to this script.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -q -y --no-install-recommends install python3 python3-venv python3-dev build-essential nginx
mkdir -p /srv/hand
python3 -m venv /srv/hand/venv
printf '%s' "$REQUIREMENTS" > /srv/hand/requirements.txt
/srv/hand/venv/bin/pip install $PIP_FLAGS -r /srv/hand/requirements.txt
