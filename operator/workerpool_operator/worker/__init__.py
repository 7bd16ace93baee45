"""The worker entrypoint (``workerpool-worker``): runs a Celery worker with probe files and load reports.

Imports only Celery, redis and the project's pure modules; never kopf or the Kubernetes client.
"""
