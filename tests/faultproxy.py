"""Moved to infra/faultproxy.py (the chaos bench uses it too); re-exported for the tests."""

from infra.faultproxy import FAULTS, FaultProxy  # noqa: F401
