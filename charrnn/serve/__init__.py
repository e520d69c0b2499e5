"""charrnn serve: a model behind OpenAI's completions API, its requests batched (docs/serve.md).

    import charrnn
    from charrnn.serve import create_app
    app = create_app(charrnn.load("runs/shakespeare"))   # an ASGI app: mount it or run it

Needs the `serve` extra (pip install 'charrnn[serve]'): FastAPI and uvicorn. One job per
module: protocol.py the requests, responses and errors; batcher.py the engine that steps every
row in flight together; app.py the routes; server.py the socket, signals and shutdown.
"""

from charrnn.serve.app import create_app, model_name
from charrnn.serve.protocol import Limits
from charrnn.serve.server import ServeError, listen, run

__all__ = ["Limits", "ServeError", "create_app", "listen", "model_name", "run"]
