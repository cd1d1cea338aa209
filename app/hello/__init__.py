"""hello: the example Flask app that the toolkit deploys.

uWSGI loads it as ``hello:create_app()``; ``wsgi.py`` beside this package
exposes ``app`` for servers that want a plain callable. Settings come from
environment variables (see ``hello.config``); pass ``environ`` to build an
app from another mapping, as the tests do.

>>> app = create_app({"APP_RELEASE": "r1"})
>>> app.test_client().get("/version").get_json()["release"]
'r1'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from hello import commands, views
from hello.config import load_settings

# Static files live beside the package so nginx can serve them from the
# release directory; the dev server serves the same folder at the same URL.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Create the app from ``environ`` (default: ``os.environ``)."""
    settings = load_settings(os.environ if environ is None else environ)

    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["SETTINGS"] = settings
    app.config["SECRET_KEY"] = settings.secret_key
    # Keep JSON key order as written: it reads better in curl output.
    app.json.sort_keys = False

    app.register_blueprint(views.bp)
    commands.register(app)
    return app
