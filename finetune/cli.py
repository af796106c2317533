"""`defect-glm train | eval | promote | checkpoints | convert`: training, evaluation, checkpoint management.

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    # Each block below belongs to one module; keep them independent.
    _register_training(subcommands)
    _register_evaluation(subcommands)
    _register_checkpoints(subcommands)
    _register_convert(subcommands)


# --- train (finetune.train) ---------------------------------------------------------------
def _register_training(subcommands: argparse._SubParsersAction) -> None:
    pass


# --- eval (finetune.evaluate) ---------------------------------------------------------------
def _register_evaluation(subcommands: argparse._SubParsersAction) -> None:
    pass


# --- promote / checkpoints (finetune.checkpoints) -------------------------------------------
def _register_checkpoints(subcommands: argparse._SubParsersAction) -> None:
    pass


# --- convert (finetune.visualglm.convert_sat) -----------------------------------------------
def _register_convert(subcommands: argparse._SubParsersAction) -> None:
    pass
