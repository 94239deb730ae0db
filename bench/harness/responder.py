"""The minimal upstream: an aiohttp server answering every chat completion with one fixed body.

`python -m bench.harness.responder --port P` runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from bench.harness.scenario import CHAT_PATH, FIXED_COMPLETION, LOOPBACK


def _serve_responder(port: int) -> None:
    """Answer every POST /v1/chat/completions with `FIXED_COMPLETION`; /healthz for readiness."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FIXED_COMPLETION, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/healthz", health)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> None:
    """Serve the minimal upstream on `--port` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.harness.responder")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _serve_responder(args.port)



if __name__ == "__main__":
    main()
