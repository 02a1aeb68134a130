"""The text the router sees for a request: :func:`router.prompt.routing_text`.

Kept here as the serving layer's name for it; the function lives in
``router`` so that the LiteLLM plug-in flattens conversations the same way.
"""

from router.prompt import routing_text

__all__ = ["routing_text"]
