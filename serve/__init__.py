"""The REST API of the Galaxy10 classifier: ``gunicorn serve.app:app``.

Kept import-light: ``serve.app`` must be able to set thread limits before numpy loads.
"""
