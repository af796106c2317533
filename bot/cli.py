"""`defect-glm bot`: run the Slack app (Socket Mode by default, HTTP mode when configured)."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the `bot` subcommand (its handler imports slack-bolt lazily)."""
