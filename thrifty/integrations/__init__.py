"""thrifty inside other tools (LiteLLM). Never imported by ``serving`` or ``training``."""
