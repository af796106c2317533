"""End to end: the real bot (slack-bolt) against the fake Slack and a real model_server with the tiny model.

The tiny model's prose and patterns are random; the tests assert on the flow and on what comes
from the die grid (dies, failing, yield) and check that the patterns shown are the server's findings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from fake_slack import FakeSlack
from fake_slack.harness import ModelServer, bot_config
from fake_slack.maps import center_map, disc, photo_png, wafer_png

from bot import blocks
from bot.app import BotRuntime
from bot.store import BotStore, thread_id_of
from data_tools.wafer_map import WaferMap
from model_server.client import ModelServerClient

pytestmark = pytest.mark.slow
CHANNEL = "C0GENERAL"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def answered(fake: FakeSlack, thread_ts: str, count: int = 1) -> list[dict] | None:
    """The bot's finished answers in a thread (messages with the feedback buttons), once there are `count`."""
    done = [m for m in fake.bot_replies(CHANNEL, thread_ts) if any(b["type"] == "actions" for b in m.get("blocks", []))]
    return done if len(done) >= count else None


def fields_of(message: dict) -> dict[str, str]:
    head = message["blocks"][0]
    return {f["text"].split("\n")[0].strip("*"): f["text"].split("\n", 1)[1] for f in head.get("fields", [])}


def edge_ring_map() -> np.ndarray:
    grid = disc()
    r, c = np.indices(grid.shape)
    grid[(np.hypot(r - 25.5, c - 25.5) > 22) & (grid == 1)] = 2
    return grid


async def upload(fake: FakeSlack, content: bytes, text: str = "", thread_ts: str | None = None, **file_kw) -> dict:
    event = fake.user_message(CHANNEL, text, files=[fake.add_file(content, **file_kw)], thread_ts=thread_ts)
    return event


def test_socket_mode_upload_follow_up_new_image_feedback_and_status(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3")
            async with BotRuntime(config):
                await fake.wait_for_socket()
                # 1. an upload without text: standard analysis, answered in the thread
                event = await upload(fake, wafer_png())
                _, ack_s = await fake.send_socket(event)
                assert ack_s < 3.0
                assert "eyes" in (await fake.wait_for(lambda: fake.reactions_on(CHANNEL, event["ts"]), what="eyes"))
                (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
                assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1  # the placeholder, updated in place
                assert answer["edited"] >= 1 and answer["thread_ts"] == event["ts"]
                await fake.wait_for(lambda: "white_check_mark" in fake.reactions_on(CHANNEL, event["ts"]))
                assert "eyes" not in fake.reactions_on(CHANNEL, event["ts"])
                facts = WaferMap(center_map()).facts()
                shown = fields_of(answer)
                assert shown["Dies"] == f"{facts['dies']:,}" and shown["Failing"] == f"{facts['failing']:,}"
                assert shown["Yield"] == f"{facts['yield']:.2f} %"
                tid = thread_id_of(fake.team, CHANNEL, event["ts"])
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(tid)
                assert view.findings is not None
                assert blocks.pattern_line(view.findings) in answer["blocks"][0]["text"]["text"]

                # 2. a text follow-up in the thread uses the thread's memory
                follow = fake.user_message(CHANNEL, "And what is the yield?", thread_ts=event["ts"])
                await fake.send_socket(follow)
                await fake.wait_for(lambda: answered(fake, event["ts"], 2), what="the follow-up answer")
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(tid)
                assert [t.role for t in view.turns][-4:] == ["user", "assistant", "user", "assistant"]
                assert view.turns[-2].text == "And what is the yield?"

                # 3. a new image in the same thread is analysed, keeping the conversation
                ring = edge_ring_map()
                new = await upload(fake, wafer_png(ring), "and this one?", thread_ts=event["ts"])
                await fake.send_socket(new)
                third = (await fake.wait_for(lambda: answered(fake, event["ts"], 3), what="the new map's answer"))[-1]
                assert fields_of(third)["Failing"] == f"{WaferMap(ring).failing:,}"
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(tid)
                assert len(view.turns) >= 6 and view.turns[-2].has_image

                # 4. 👍 on the first answer is stored with the answer and the image
                button = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"][0]
                await fake.send_socket_interactive(fake.block_action(answer, button["action_id"], button["value"]))
                await fake.wait_for(lambda: fake.ephemerals, what="the thanks")
                store = BotStore(config.db_path)
                try:
                    (voted,) = store.voted_answers()
                    assert voted.up == 1 and store.image(voted.image_sha256).data == wafer_png()
                finally:
                    store.close()

                # 5. /wafer status and help answer from the ack
                ack = await fake.send_socket_command(fake.slash_command("status"))
                status_text = ack["payload"]["text"]
                assert "*Model:*" in status_text and "version" in status_text and "*Queue:*" in status_text
                assert "3 answered" in status_text
                ack = await fake.send_socket_command(fake.slash_command("help"))
                assert "/wafer status" in ack["payload"]["text"]

            # the token went only to the Slack API and the trusted file host, and never into a log line
            assert all(auth == f"Bearer {fake.bot_token}" for _, auth in fake.file_requests)
            assert fake.bot_token not in caplog.text and fake.app_token not in caplog.text

    run(go())


def test_repeats_and_noise_produce_one_answer(tmp_path: Path, tiny_model_dir: Path) -> None:
    async def go() -> None:
        async with (
            FakeSlack() as fake,
            ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server,
            BotRuntime(bot_config(fake, server.url, tmp_path / "bot.sqlite3")),
        ):
            await fake.wait_for_socket()
            event = await upload(fake, wafer_png(), "what is this?")
            body, _ = await fake.send_socket(event)
            await fake.send_socket(event, event_id=body["event_id"], retry_attempt=1)  # Slack's retry
            mention = dict(event, type="app_mention")  # the same message as an app_mention event
            await fake.send_socket(mention)
            await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
            # noise: our own message, another bot, an edit, a deletion, plain channel chatter
            noise = [
                fake.user_message(CHANNEL, "bot talk", user=fake.bot_user_id),
                fake.user_message(CHANNEL, "other bot", bot_id="BOTHER", files=[fake.add_file(wafer_png())]),
                fake.user_message(CHANNEL, "edit", subtype="message_changed"),
                fake.user_message(CHANNEL, "gone", subtype="message_deleted"),
                fake.user_message(CHANNEL, "lunch?"),
            ]
            for ev in noise:
                await fake.send_socket(ev)
            await asyncio.sleep(1.0)
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1
            for ev in noise:
                assert fake.bot_replies(CHANNEL, ev["ts"]) == [] and not fake.reactions_on(CHANNEL, ev["ts"])
            async with ModelServerClient(server.url) as client:
                view = await client.get_thread(thread_id_of(fake.team, CHANNEL, event["ts"]))
            assert sum(t.role == "user" for t in view.turns) == 1

    run(go())


def test_server_down_queue_survives_restart_and_answers_when_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            server = ModelServer(tiny_model_dir, tmp_path / "server.sqlite3")  # not started: down
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3", retry_for_s=120)
            async with BotRuntime(config):
                await fake.wait_for_socket()
                event = await upload(fake, wafer_png(), "what defects?")
                await fake.send_socket(event)
                notice = await fake.wait_for(
                    lambda: [m for m in fake.bot_replies(CHANNEL, event["ts"]) if "queued" in m["text"]],
                    what="the delay notice")
                assert "hourglass_flowing_sand" in fake.reactions_on(CHANNEL, event["ts"])
            # the bot restarts while the server is still down; then the server comes back
            async with BotRuntime(config):
                await server.start()
                try:
                    (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), 30, "the delayed answer")
                finally:
                    await server.stop()
            assert answer["ts"] == notice[0]["ts"]  # the same message, updated in place
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1
            reactions = fake.reactions_on(CHANNEL, event["ts"])
            assert "white_check_mark" in reactions and "hourglass_flowing_sand" not in reactions, fake.reaction_log

    run(go())


def test_server_that_never_returns_gets_an_apology(tmp_path: Path) -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            config = bot_config(fake, "http://127.0.0.1:9", tmp_path / "bot.sqlite3", retry_for_s=0.6)
            async with BotRuntime(config):
                await fake.wait_for_socket()
                event = await upload(fake, wafer_png())
                await fake.send_socket(event)
                (msg,) = await fake.wait_for(
                    lambda: [m for m in fake.bot_replies(CHANNEL, event["ts"]) if m["text"].startswith("Sorry")],
                    what="the apology")
                assert "did not come back" in msg["text"]
                await fake.wait_for(lambda: "x" in fake.reactions_on(CHANNEL, event["ts"]))
                assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1
                # /wafer status still answers at once, saying the server is unreachable
                start = time.monotonic()
                ack = await fake.send_socket_command(fake.slash_command("status"))
                assert time.monotonic() - start < 3.0 and "not reachable" in ack["payload"]["text"]
                store = BotStore(config.db_path)
                assert store.queue_counts()["failed"] == 1
                store.close()

    run(go())


def test_follow_up_after_the_bot_lost_its_database(tmp_path: Path, tiny_model_dir: Path) -> None:
    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            async with BotRuntime(bot_config(fake, server.url, tmp_path / "bot.sqlite3")):
                await fake.wait_for_socket()
                event = await upload(fake, wafer_png())
                await fake.send_socket(event)
                await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
            # a new, empty database: the bot finds its own reply with conversations.replies
            async with BotRuntime(bot_config(fake, server.url, tmp_path / "fresh.sqlite3")):
                await fake.wait_for_socket()
                await fake.send_socket(fake.user_message(CHANNEL, "and the yield?", thread_ts=event["ts"]))
                await fake.wait_for(lambda: answered(fake, event["ts"], 2), what="the follow-up answer")
            assert fake.calls_of("conversations.replies")
            # an unrelated thread reply (a thread the bot is not in) is left alone
            async with BotRuntime(bot_config(fake, server.url, tmp_path / "fresh.sqlite3")):
                await fake.wait_for_socket()
                parent = fake.user_message(CHANNEL, "lunch?")
                await fake.send_socket(fake.user_message(CHANNEL, "pizza", thread_ts=parent["ts"]))
                await asyncio.sleep(0.5)
                assert fake.bot_replies(CHANNEL, parent["ts"]) == []

    run(go())


def test_each_bad_input_gets_its_own_plain_message(tmp_path: Path, tiny_model_dir: Path) -> None:
    cases = [
        ({"content": b"lot,yield\n7,93\n", "name": "yield.csv", "mimetype": "text/csv"}, "is not an image"),
        ({"content": wafer_png(), "size": 60_000_000}, "the largest image I accept"),
        ({"content": wafer_png(), "html_instead": True}, "files:read"),
        ({"content": photo_png(), "name": "cat.png"}, "does not look like a wafer map"),
    ]

    async def go() -> None:
        async with (
            FakeSlack() as fake,
            ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server,
            BotRuntime(bot_config(fake, server.url, tmp_path / "bot.sqlite3")),
        ):
            await fake.wait_for_socket()
            events = []
            for file_kw, _ in cases:
                content = file_kw.pop("content")
                events.append(await upload(fake, content, **file_kw))
                await fake.send_socket(events[-1])
            for event, (_, words) in zip(events, cases):
                await fake.wait_for(lambda e=event: "x" in fake.reactions_on(CHANNEL, e["ts"]), what=words)
                (reply,) = fake.bot_replies(CHANNEL, event["ts"])
                assert words in reply["text"], reply["text"]
                assert not any(b["type"] == "actions" for b in reply.get("blocks", []))
            downloaded = {path.split("/")[2] for path, _ in fake.file_requests}
            assert events[0]["files"][0]["id"] not in downloaded  # decided from metadata
            assert events[1]["files"][0]["id"] not in downloaded

    run(go())


def test_http_mode_signed_events_retries_commands_and_buttons(tmp_path: Path, tiny_model_dir: Path) -> None:
    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3", mode="http", upload_map=True)
            async with BotRuntime(config) as runtime:
                url = f"http://127.0.0.1:{runtime.port}/slack/events"
                event = await upload(fake, wafer_png(), "which patterns?")
                _, status, _ = await fake.send_http(url, event, secret="wrong-secret")
                assert status == 401
                fake.rate_limit("chat.update", times=1, retry_after=0.2)  # Slack throttles the answer once
                body, status, seconds = await fake.send_http(url, event)
                assert status == 200 and seconds < 3.0
                _, status, _ = await fake.send_http(url, event, event_id=body["event_id"], retry_num=1)
                assert status == 200
                (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
                assert len(fake.calls_of("chat.update")) >= 2  # the 429 was retried
                # the map as read is uploaded in the thread (files_upload_v2's three steps)
                upload_msg = await fake.wait_for(
                    lambda: [m for m in fake.thread(CHANNEL, event["ts"]) if m.get("files") and m.get("bot_id")],
                    what="the map as read")
                assert fake.calls_of("files.getUploadURLExternal") and fake.calls_of("files.completeUploadExternal")
                assert fake.files[upload_msg[0]["files"][0]["id"]].content.startswith(b"\x89PNG")
                # feedback and /wafer over HTTP
                button = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"][1]
                status, _ = await fake.send_http_interactive(url, fake.block_action(answer, button["action_id"],
                                                                                    button["value"]))
                assert status == 200
                await fake.wait_for(lambda: fake.ephemerals, what="the thanks")
                status, text, seconds = await fake.send_http_command(url, fake.slash_command("status"))
                assert status == 200 and "*Model:*" in text and seconds < 3.0
            assert len([m for m in fake.bot_replies(CHANNEL, event["ts"]) if not m.get("files")]) == 1

    run(go())
