"""Decisions, free of kopf and of I/O: given what the API holds, what should change.

Each function here is pure and unit-tested; the handlers in ``plunder.operator`` glue them to the
API.
"""
