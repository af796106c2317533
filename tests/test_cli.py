"""The `defect-glm` entry point: every part is reachable from one command."""

from __future__ import annotations

import subprocess
import sys

import defect_glm


def test_help_lists_every_subcommand():
    text = defect_glm.build_parser().format_help()
    for command in ("data", "train", "eval", "serve", "bot", "chat", "demo"):
        assert command in text


def test_installed_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "defect_glm", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "defect-glm" in out.stdout
