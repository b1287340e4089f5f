"""The Celery side of polyfit: the app, the task that trains a batch of jobs, device pinning and
the worker launcher."""
