"""The floor of the gateway benchmark: a bare FastAPI pass-through.

``POST /v1/chat/completions`` forwards the body unchanged to the upstream with
the openai SDK on its aiohttp transport (``openai.DefaultAioHttpClient``) and
returns the answer (JSON, or SSE re-emitted chunk by chunk). No routing, no
logging, no validation beyond the SDK's own parsing: what any Python gateway
built on FastAPI + the openai SDK pays at least.

    python bench/passthrough.py --upstream http://127.0.0.1:9001/v1 --port 9002
"""


import argparse
import json
import sys


def create_app(upstream, api_key="sk-bench"):
    from contextlib import asynccontextmanager

    import openai
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    state = {}

    @asynccontextmanager
    async def lifespan(app):
        state["client"] = openai.AsyncOpenAI(base_url=upstream, api_key=api_key, http_client=openai.DefaultAioHttpClient(), max_retries=0)
        yield
        await state["client"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = json.loads(await request.body())
        client = state["client"]
        try:
            if not body.get("stream"):
                resp = await client.chat.completions.create(**body)
                return Response(resp.model_dump_json(), media_type="application/json")
            stream = await client.chat.completions.create(**body)

            async def events():
                async for chunk in stream:
                    yield f"data: {chunk.model_dump_json()}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        except openai.APIStatusError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=exc.status_code)
        except openai.APIError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=502)

    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9001/v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the pass-through listens on loopback only")
    import uvicorn

    if args.workers != 1:
        sys.exit("the pass-through runs one worker (the benchmark gives every gateway one)")
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
