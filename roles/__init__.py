"""Roles: what gets installed, written only in the engine's operations.

Each role is a module with documented ``DEFAULTS`` (overridable from inventory
vars), optional ``HANDLERS`` or ``handlers(host)``, and ``apply(host)``.
"""
