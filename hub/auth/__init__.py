"""Operators' accounts, roles, sessions and API tokens, and the access table every HTTP route goes through."""
