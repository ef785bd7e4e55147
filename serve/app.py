"""The WSGI entry point: ``gunicorn serve.app:app`` (settings from the environment/.env).

Importing this module builds the app, so each gunicorn worker loads the model
once, after the fork (no ``preload_app``: an interpreter and a connection pool
must not be shared across a fork).
"""

from galaxylib.inference.threads import limit_native_threads

limit_native_threads()  # before numpy and LiteRT are imported

from serve.factory import create_app  # noqa: E402

app = create_app()
