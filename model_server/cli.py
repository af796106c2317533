"""`defect-glm serve | chat | demo`: run the server, chat in a terminal, or start the local demo.

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    # Each block below belongs to one module; keep them independent.
    _register_serve(subcommands)
    _register_chat(subcommands)
    _register_demo(subcommands)


# --- serve (model_server.app / model_server.config) ------------------------------------------
def _register_serve(subcommands: argparse._SubParsersAction) -> None:
    from model_server.config import add_arguments  # stdlib-only module: cheap to import

    parser = subcommands.add_parser(
        "serve",
        help="run the inference server (thread API, OpenAI-compatible API, metrics)",
        description="Serve the model over HTTP. Every option can also be set by its environment variable "
        "(shown in brackets; the full table is in docs/server.md). Binds 127.0.0.1 unless --host says otherwise.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from defect_glm import CommandError
    from model_server.config import ConfigError, from_args

    try:
        config = from_args(args)
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model_server.app import run
    from model_server.backends.base import BackendError
    from model_server.backends.registry import create_backend, use_torch_threads

    use_torch_threads(config)
    try:
        backend = create_backend(config)  # load before binding: a bad model path fails here, clearly
    except (ConfigError, BackendError, ValueError, OSError) as exc:
        raise CommandError(f"cannot load the {config.backend} backend: {exc}") from exc
    try:
        run(config, backend)
    finally:
        backend.close()  # a model process ends with the server
    return 0


# --- chat (model_server.chat_cli) --------------------------------------------------------------
def _register_chat(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "chat",
        help="chat about one wafer map in the terminal (thread memory; Ctrl-D ends)",
        description="Ask about a wafer map image, then type follow-up questions; the conversation is one "
        "thread of the thread API. Without --server the command starts its own server on this machine. Ctrl-D ends.",
    )
    parser.add_argument("image", metavar="IMAGE", help="wafer map image (PNG, JPEG, ...)")
    parser.add_argument("--question", "-q", default=None,
                        help="first question (default: 'What defects does this wafer show?')")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="a running server, e.g. http://127.0.0.1:8080 (default: a server inside this command)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="checkpoint directory for the command's own server (default: the served checkpoint)")
    parser.add_argument("--db", default=None, metavar="FILE",
                        help="SQLite thread memory for the command's own server (default: the server's default)")
    parser.add_argument("--thread", default=None, metavar="ID", help="thread id (default: a new one)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="seconds to wait for one answer (default: 300)")

    def handler(args: argparse.Namespace) -> int:
        from model_server.chat_cli import run_chat_command

        return run_chat_command(args)

    parser.set_defaults(handler=handler)


# --- demo (model_server.demo) ------------------------------------------------------------------
def _register_demo(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="start the local demo: the model server and its web page (default http://127.0.0.1:7860)",
        description="Starts the model server with the default model and serves the demo page; "
        "sample wafer maps are on the page. Ctrl-C stops it.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (default: 7860; 0 picks a free one)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="checkpoint directory (default: the promoted checkpoint or the committed default model)")
    parser.add_argument("--db", default=None, metavar="FILE",
                        help="SQLite file for thread memory (default: $DEFECT_GLM_HOME/server/threads.sqlite)")

    def handler(args: argparse.Namespace) -> int:
        from model_server.demo import run_demo_command

        return run_demo_command(args)

    parser.set_defaults(handler=handler)
