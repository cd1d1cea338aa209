"""Development server: ``python -m hello`` from the app/ directory.

Not for production: the toolkit runs the app under uWSGI behind nginx.
"""

from __future__ import annotations

import argparse

from hello import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hello", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to bind (default: 5000)")
    parser.add_argument("--debug", action="store_true", help="reloader and debugger on")
    args = parser.parse_args(argv)
    create_app().run(host=args.host, port=args.port, debug=args.debug)


if __name__ == "__main__":
    main()
