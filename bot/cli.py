"""`defect-glm bot`: run the Slack app (Socket Mode by default, HTTP mode when configured)."""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the `bot` subcommand (its handler imports slack-bolt lazily)."""
    parser = subcommands.add_parser(
        "bot",
        help="run the Slack app (settings from the environment: see docs/slack.md)",
        description=(
            "Run the Defect-GLM Slack app. Settings come from the environment (SLACK_BOT_TOKEN, SLACK_APP_TOKEN "
            "or SLACK_SIGNING_SECRET, DEFECT_GLM_SERVER_URL, …; every variable is listed in bot/config.py and "
            "docs/slack.md); the flags below override them."
        ),
    )
    parser.add_argument("--mode", choices=("socket", "http"), help="Socket Mode or HTTP mode (DEFECT_GLM_BOT_MODE)")
    parser.add_argument("--port", type=int, help="HTTP mode port (PORT)")
    parser.add_argument("--server-url", help="model_server base URL (DEFECT_GLM_SERVER_URL)")
    parser.add_argument("--db", help="the bot's SQLite file: queue, dedupe, feedback (DEFECT_GLM_BOT_DB)")
    parser.add_argument("--upload-map", action="store_true", default=None,
                        help="upload the map as read, failing dies highlighted (DEFECT_GLM_BOT_UPLOAD_MAP=1)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level (DEFECT_GLM_BOT_LOG_LEVEL)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the settings in effect (secrets masked) and exit")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import logging
    from pathlib import Path

    from bot import redact
    from bot.config import BotConfig, ConfigError
    from defect_glm import CommandError

    overrides: dict[str, object] = {}
    for flag, name in (("mode", "mode"), ("port", "port"), ("server_url", "server_url"),
                       ("upload_map", "upload_map"), ("log_level", "log_level")):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    if args.db is not None:
        overrides["db_path"] = Path(args.db)
    if args.server_url is not None and not args.server_url.startswith(("http://", "https://")):
        raise CommandError(f"--server-url must be an http(s) URL, got {args.server_url!r}")
    try:
        config = BotConfig.from_env(**overrides)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    if args.print_config:
        print(json.dumps(config.verbose, indent=2))
        return 0
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install([config.bot_token, config.app_token, config.signing_secret])

    import aiohttp
    from slack_sdk.errors import SlackApiError

    from bot.app import run_bot
    from bot.store import StoreError

    try:
        asyncio.run(run_bot(config))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    except SlackApiError as exc:
        raise CommandError(
            f"Slack refused the bot's credentials ({exc.response.get('error')}); check SLACK_BOT_TOKEN / SLACK_APP_TOKEN"
        ) from None
    except aiohttp.ClientConnectionError as exc:
        raise CommandError(f"cannot reach Slack at {config.slack_api_url}: {exc}") from None
    return 0
