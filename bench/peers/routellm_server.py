"""Start RouteLLM's OpenAI-compatible server (``routellm.openai_server``) on loopback.

RouteLLM's own ``__main__`` binds 0.0.0.0 with no option to change it; this
wrapper passes the same command-line arguments through to the module (which
parses ``sys.argv`` at import) and then starts its ``app`` with uvicorn exactly
as its ``__main__`` does (default loop/HTTP implementations, access log on),
except for ``host=127.0.0.1``. Run it with the benchmark environment's Python
(``bench/.venv``), e.g.::

    bench/.venv/bin/python bench/peers/routellm_server.py --port 9003 --routers random \
        --base-url http://127.0.0.1:9001/v1 --api-key sk-bench \
        --strong-model openai/fake-strong --weak-model openai/fake-weak

Clients send ``model="router-random-0.5"``. The ``random`` router loads no
weights; the environment variables below keep transformers/datasets/LiteLLM
from reaching the network at import time.
"""

import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench")  # openai_server builds an AsyncOpenAI() at import


def main():
    argv = sys.argv[1:]
    workers = 1
    if "--workers" in argv:
        workers = int(argv[argv.index("--workers") + 1])
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 6060
    sys.argv = [sys.argv[0]] + argv
    import uvicorn

    import routellm.openai_server as server  # parses sys.argv

    if workers > 1:  # uvicorn needs an import string for several workers; the module re-parses sys.argv in each
        uvicorn.run("routellm.openai_server:app", host="127.0.0.1", port=port, workers=workers)
    else:
        uvicorn.run(server.app, host="127.0.0.1", port=port, workers=1)


if __name__ == "__main__":
    main()
