"""What the API and the workers share: settings, database tables, storage, the Celery app and the CLI.

Nothing here imports FastAPI; `ml` never imports this package.
"""
