"""A plain WSGI callable for servers that want ``module:attribute``
(``wsgi:app``) rather than the factory ``hello:create_app()``."""

from hello import create_app

app = create_app()
