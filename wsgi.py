"""WSGI entry point: the only module-level application, for gunicorn."""

from app import create_app

app = create_app()
