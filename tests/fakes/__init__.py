"""Test doubles that speak real protocols: a fake provider server, and a thread runner for ASGI apps."""
