"""ChatForge's machine-learning library.

Pure ML: data formats, training recipes, RLHF and the serving engine. It knows nothing about HTTP,
databases or Celery and must never import `api`, `workers` or `chatforge`; every recipe takes plain
dataclasses, paths and a `JobSink` (ml.events), so it can be run from a Python shell.
"""
