"""`defect-glm` subcommands of the finetune package."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands (handlers import heavy modules lazily)."""
