"""Serving: the OpenAI- and Anthropic-compatible HTTP endpoint that routes and dispatches requests.

Depends on ``models`` and ``router``; never on ``training``.
"""
