"""Prefect tasks: each a decorator, a logger and one call into `sknet`."""
