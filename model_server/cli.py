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
    pass


# --- chat (model_server.chat_cli) --------------------------------------------------------------
def _register_chat(subcommands: argparse._SubParsersAction) -> None:
    pass


# --- demo (model_server.demo) ------------------------------------------------------------------
def _register_demo(subcommands: argparse._SubParsersAction) -> None:
    pass
