"""`charrnn serve`: a model behind OpenAI's completions API over HTTP (docs/serve.md). The
server is charrnn/serve/'s (the optional extra `serve`); this command checks its flags, loads
the model, says where it listens, and runs it until SIGINT or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charrnn.checks import MAX_GRACE
from charrnn.cli.options import CHECKPOINT_HELP, load_model, most
from charrnn.cli.program import PlainCommand, app
from charrnn.cli.streams import error, note, user_errors

API_KEY_ENV = "CHARRNN_API_KEY"


@app.command(cls=PlainCommand)
def serve(
    checkpoint: Annotated[
        Path | None, typer.Argument(metavar="[CHECKPOINT_OR_RUN]", help=CHECKPOINT_HELP)
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            metavar="ADDRESS",
            help="Address to listen on. The default takes connections from this machine only; "
            "0.0.0.0 takes them from anywhere (then set an --api-key).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port (0: any free one).")
    ] = 8000,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The model's name in the API (default: the run folder's name, else the "
            "checkpoint file's).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            envvar=API_KEY_ENV,
            show_envvar=False,
            help=f"Require the header 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, "
            "else no key).",
        ),
    ] = None,
    max_requests: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("max_requests"),
            metavar="N",
            help="Requests in flight at once; more get 429.",
        ),
    ] = 64,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("max_tokens"),
            metavar="N",
            help="The largest max_tokens (characters) accepted.",
        ),
    ] = 4096,
    max_n: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("max_n"),
            metavar="N",
            help="Choices per request at most (n times the prompts).",
        ),
    ] = 16,
    max_body: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("max_body"),
            metavar="BYTES",
            help="Request body size at most; more get 413.",
        ),
    ] = 1 << 20,
    grace: Annotated[
        float,
        typer.Option(
            min=0,
            max=MAX_GRACE,
            metavar="SECONDS",
            help="On SIGINT/SIGTERM, time the requests in flight get to finish before they "
            'end with finish_reason "abort".',
        ),
    ] = 5.0,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Nothing on stderr but errors: no line per request."),
    ] = False,
) -> None:
    """Serve a model over HTTP with OpenAI's completions API (POST /v1/completions, streamed
    or not; GET /v1/models, /health). Concurrent requests are batched: every sequence in
    flight advances one character per step. Stops cleanly on Ctrl-C or SIGTERM."""
    try:
        from charrnn.serve import Limits, create_app, listen, run
        from charrnn.serve import model_name as default_name
    except ImportError as e:
        raise error(
            f"charrnn serve needs the serve extra ({e.name} is missing); install it with "
            "pip install 'charrnn[serve]'"
        ) from None
    if api_key is not None and not api_key.strip():
        raise typer.BadParameter("must not be empty", param_hint="'--api-key'")
    with user_errors():
        model = load_model(checkpoint, quiet)
        limits = Limits(
            max_tokens=max_tokens,
            max_n=max_n,
            max_requests=max_requests,
            max_body=max_body,
            default_max_tokens=min(256, max_tokens),
        )
        name = model_name or default_name(model)
        log = None if quiet else note
        server = create_app(model, name=name, api_key=api_key, limits=limits, log=log)
        sock = listen(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        if not quiet:
            where = f"[{bound_host}]" if ":" in bound_host else bound_host
            arch = model.arch
            note(
                f"Serving {model.path} as model '{name}' ({arch.cell}, {arch.num_layers} x "
                f"{arch.hidden_size}, {arch.vocab_size} characters) on "
                f"http://{where}:{bound_port}/v1{' (API key required)' if api_key else ''}; "
                "Ctrl-C to stop"
            )
        run(server, sock, grace=grace)
        if not quiet:
            note("Stopped.")
