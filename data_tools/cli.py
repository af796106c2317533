"""`defect-glm data …`: the data tools from the command line (synth, stats, read, build, feedback-export).

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="wafer-map data: synthesise, inspect, read images, build corpora")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    # Each block below belongs to one module; keep them independent.
    _register_synth(actions)
    _register_stats(actions)
    _register_read(actions)
    _register_build(actions)
    _register_feedback_export(actions)


# --- synth (data_tools.synthetic) -------------------------------------------------------
def _register_synth(actions: argparse._SubParsersAction) -> None:
    pass


# --- stats (data_tools.stats) ------------------------------------------------------------
def _register_stats(actions: argparse._SubParsersAction) -> None:
    pass


# --- read (data_tools.image_reader) ------------------------------------------------------
def _register_read(actions: argparse._SubParsersAction) -> None:
    pass


# --- build (data_tools.corpus) -----------------------------------------------------------
def _register_build(actions: argparse._SubParsersAction) -> None:
    pass


# --- feedback-export (bot feedback → corpus records) -------------------------------------
def _register_feedback_export(actions: argparse._SubParsersAction) -> None:
    pass
