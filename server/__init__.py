"""The ARTE Edge fleet server: ``server.app.create_app(settings)`` (FastAPI) with
``server.settings.ServerSettings``; the ``arte-server`` CLI is ``server.cli``. Imports ``arte``, never
``edge_agent``. Nothing is imported here so that ``arte-server --help`` stays light."""
