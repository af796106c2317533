"""End to end: the real bot (slack-bolt) against the fake Slack and a real model_server with the tiny model.

The tiny model's prose and patterns are random; the tests assert on the flow and on what comes
from the die grid (dies, failing, yield) and check that the patterns shown are the server's findings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from fake_slack import FakeSlack
from fake_slack.harness import Delivery, ModelServer, bot_config
from fake_slack.maps import center_map, disc, photo_png, wafer_png

from bot import blocks
from bot.app import BotRuntime
from bot.events import DEFAULT_QUESTION
from bot.store import BotStore, thread_id_of
from data_tools.wafer_map import WaferMap
from model_server.client import ModelServerClient

# A few seconds each on an idle machine; the generous limits only matter on a starved, shared CPU.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CHANNEL = "C0GENERAL"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 570))


def answered(fake: FakeSlack, thread_ts: str, count: int = 1, channel: str = CHANNEL) -> list[dict] | None:
    """The bot's finished answers in a thread (messages with the feedback buttons), once there are `count`."""
    done = [m for m in fake.bot_replies(channel, thread_ts) if any(b["type"] == "actions" for b in m.get("blocks", []))]
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


@pytest.mark.parametrize("mode", ["socket", "http"])
def test_upload_follow_up_new_image_feedback_and_status(
    mode: str, tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole conversation, in Socket Mode and in HTTP mode."""
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3", mode=mode)
            async with BotRuntime(config) as runtime:
                slack = Delivery(fake, mode, runtime.port)
                await slack.ready()
                # 1. an upload without text: standard analysis, answered in the thread
                event = await upload(fake, wafer_png())
                _, ack_s = await slack.event(event)
                assert ack_s < 3.0
                assert "eyes" in (await fake.wait_for(lambda: fake.reactions_on(CHANNEL, event["ts"]), what="eyes"))
                (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
                assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1  # the placeholder, updated in place
                first_post = fake.calls_of("chat.postMessage")[0].params
                assert first_post["text"] == blocks.PLACEHOLDER_TEXT and first_post["thread_ts"] == event["ts"]
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
                assert view.turns[0].text == DEFAULT_QUESTION  # no text with the upload: the standard analysis

                # 2. a text follow-up in the thread uses the thread's memory
                follow = fake.user_message(CHANNEL, "And what is the yield?", thread_ts=event["ts"])
                await slack.event(follow)
                await fake.wait_for(lambda: answered(fake, event["ts"], 2), what="the follow-up answer")
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(tid)
                assert [t.role for t in view.turns][-4:] == ["user", "assistant", "user", "assistant"]
                assert view.turns[-2].text == "And what is the yield?"

                # 2b. "thanks!" asks nothing: a reaction, no answer, nothing asked of the model server
                thanks = fake.user_message(CHANNEL, "thanks! :pray:", thread_ts=event["ts"])
                await slack.event(thanks)
                await fake.wait_for(lambda: "+1" in fake.reactions_on(CHANNEL, thanks["ts"]), what="the +1")
                assert len(fake.bot_replies(CHANNEL, event["ts"])) == 2
                async with ModelServerClient(server.url) as client:
                    assert len((await client.get_thread(tid)).turns) == len(view.turns)

                # 3. a new image in the same thread is analysed, keeping the conversation
                ring = edge_ring_map()
                new = await upload(fake, wafer_png(ring), "and this one?", thread_ts=event["ts"])
                await slack.event(new)
                third = (await fake.wait_for(lambda: answered(fake, event["ts"], 3), what="the new map's answer"))[-1]
                assert fields_of(third)["Failing"] == f"{WaferMap(ring).failing:,}"
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(tid)
                assert len(view.turns) >= 6 and view.turns[-2].has_image and view.turns[-2].text == "and this one?"
                await fake.wait_for(lambda: "white_check_mark" in fake.reactions_on(CHANNEL, new["ts"]))

                # 4. 👍 on the first answer is stored with the answer and the image
                button = next(b for b in answer["blocks"] if b["type"] == "actions")["elements"][0]
                await slack.action(fake.block_action(answer, button["action_id"], button["value"]))
                await fake.wait_for(lambda: fake.ephemerals, what="the thanks")
                store = BotStore(config.db_path)
                try:
                    (voted,) = store.voted_answers()
                    assert voted.up == 1 and store.image(voted.image_sha256).data == wafer_png()
                    assert voted.question == DEFAULT_QUESTION and voted.answer == view.turns[1].text
                finally:
                    store.close()

                # 5. /wafer status and help answer from the acknowledgement, within Slack's 3 s
                status_text, seconds = await slack.command("status")
                assert seconds < 3.0
                assert "*Model:*" in status_text and "version" in status_text and "*Queue:*" in status_text
                assert "3 answered" in status_text and "uptime" in status_text
                help_text, _ = await slack.command("help")
                assert "/wafer status" in help_text

            # the token went only to the Slack API and the trusted file host, and never into a log line
            assert all(auth == f"Bearer {fake.bot_token}" for _, auth in fake.file_requests)
            assert fake.bot_token not in caplog.text and fake.app_token not in caplog.text
            assert fake.signing_secret not in caplog.text

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
                    (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the delayed answer")
                finally:
                    await server.stop()
            assert answer["ts"] == notice[0]["ts"]  # the same message, updated in place
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1
            reactions = fake.reactions_on(CHANNEL, event["ts"])
            assert "white_check_mark" in reactions and "hourglass_flowing_sand" not in reactions, fake.reaction_log

    run(go())


def test_a_restart_during_the_image_download_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3")
            fake.download_gate = asyncio.Event()  # the download hangs until the bot is gone
            async with BotRuntime(config):
                await fake.wait_for_socket()
                event = await upload(fake, wafer_png(center_map()), "what defects?")
                await fake.send_socket(event)
                await fake.wait_for(lambda: fake.file_requests, what="the download to start")
            store = BotStore(config.db_path)
            assert store.queue_counts().get("running") == 1  # stopped mid-download: still queued
            store.close()
            fake.download_gate.set()
            async with BotRuntime(config):  # the restarted bot downloads again and answers
                (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer")
            assert fields_of(answer)["Failing"] == f"{WaferMap(center_map()).failing:,}"
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1  # the placeholder, answered in place
            assert len(fake.file_requests) == 2

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
                assert fake.upload_requests and all(auth is None for _, auth in fake.upload_requests)  # no token
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


def test_dm_mention_allowlist_and_file_metadata_lookup(tmp_path: Path, tiny_model_dir: Path) -> None:
    """DMs and mentions with an image are analysed; a mention without one gets a hint; other channels are ignored."""

    async def go() -> None:
        async with FakeSlack() as fake, ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3", channel_allowlist=frozenset({CHANNEL}))
            async with BotRuntime(config):
                await fake.wait_for_socket()
                # a DM whose event carries only the file id: completed with files.info, answered in the DM
                dm = fake.user_message("D0ALICE", "is this a scratch?", channel_type="im",
                                       files=[fake.add_file(wafer_png(), only_id=True)])
                await fake.send_socket(dm)
                (dm_answer,) = await fake.wait_for(lambda: answered(fake, dm["ts"], channel="D0ALICE"),
                                                   what="the DM answer")
                assert dm_answer["thread_ts"] == dm["ts"]
                assert fields_of(dm_answer)["Failing"] == f"{WaferMap(center_map()).failing:,}"
                assert [c.params["file"] for c in fake.calls_of("files.info")] == [dm["files"][0]["id"]]
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(thread_id_of(fake.team, "D0ALICE", dm["ts"]))
                assert view.turns[0].text == "is this a scratch?" and view.turns[0].has_image

                # a mention with an image in an allowed channel (app_mention event): the mention is not the question
                ring = edge_ring_map()
                mention = fake.user_message(CHANNEL, "where are the failures?", mention=True,
                                            files=[fake.add_file(wafer_png(ring))])
                await fake.send_socket(dict(mention, type="app_mention"))
                (answer,) = await fake.wait_for(lambda: answered(fake, mention["ts"]), what="the mention's answer")
                assert fields_of(answer)["Failing"] == f"{WaferMap(ring).failing:,}"
                async with ModelServerClient(server.url) as client:
                    view = await client.get_thread(thread_id_of(fake.team, CHANNEL, mention["ts"]))
                assert view.turns[0].text == "where are the failures?"

                # a mention without an image: a hint in its thread, nothing queued
                hint = fake.user_message(CHANNEL, "hello", mention=True)
                await fake.send_socket(dict(hint, type="app_mention"))
                (reply,) = await fake.wait_for(lambda: fake.bot_replies(CHANNEL, hint["ts"]), what="the hint")
                assert "wafer-map image" in reply["text"]

                # an upload in a channel that is not on DEFECT_GLM_BOT_CHANNELS is left alone
                other = fake.user_message("C0OTHER", "", files=[fake.add_file(wafer_png())])
                await fake.send_socket(other)
                await asyncio.sleep(0.5)
                assert fake.bot_replies("C0OTHER", other["ts"]) == [] and not fake.reactions_on("C0OTHER", other["ts"])
                assert not any(other["files"][0]["id"] in path for path, _ in fake.file_requests)
                store = BotStore(config.db_path)
                try:
                    assert store.queue_counts()["done"] == 2 and sum(store.queue_counts().values()) == 2
                finally:
                    store.close()

    run(go())


class SlowProxy:
    """An HTTP proxy in front of the model server whose first `hang` message requests never answer."""

    def __init__(self, target: str, hang: int) -> None:
        self.target = target
        self.hang = hang
        self.seen = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path.endswith("/messages"):
            self.seen += 1
            if self.seen <= self.hang:
                await asyncio.sleep(3600)  # the client gives up long before
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-request-id")}
        async with aiohttp.ClientSession() as session, session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type, headers={k: v for k, v in resp.headers.items()
                                                                         if k.lower() == "retry-after"})

    async def __aenter__(self) -> SlowProxy:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def test_model_server_timing_out_is_a_delay_then_an_answer(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A server that accepts the request but does not answer in time: delayed notice, retry, answer in place."""

    async def go() -> None:
        async with (
            FakeSlack() as fake,
            ModelServer(tiny_model_dir, tmp_path / "server.sqlite3") as server,
            SlowProxy(server.url, hang=1) as proxy,
        ):
            config = bot_config(fake, proxy.url, tmp_path / "bot.sqlite3", server_timeout_s=1.0,
                                retry_for_s=300, retry_initial_s=2.0)
            async with BotRuntime(config) as runtime:
                await fake.wait_for_socket()
                event = await upload(fake, wafer_png(), "what defects?")
                await fake.send_socket(event)
                await fake.wait_for(lambda: "hourglass_flowing_sand" in fake.reactions_on(CHANNEL, event["ts"]),
                                    what="the delay marker after the time-out")
                # the server is fast again; a generous limit keeps a slow CPU from timing out the retry too
                assert runtime.worker is not None
                runtime.worker.model.timeout = 120.0
                (answer,) = await fake.wait_for(lambda: answered(fake, event["ts"]), what="the answer after the retry")
            assert proxy.seen >= 2  # the first request timed out and was retried
            assert fields_of(answer)["Failing"] == f"{WaferMap(center_map()).failing:,}"
            texts = [c.params.get("text", "") for c in fake.calls_of("chat.update")]
            assert any("not answering right now" in t for t in texts)  # the user was told it is delayed
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1  # …in the message that now holds the answer
            assert len(fake.calls_of("chat.postMessage")) == 1  # the placeholder; notice and answer were updates
            reactions = fake.reactions_on(CHANNEL, event["ts"])
            assert "white_check_mark" in reactions and "hourglass_flowing_sand" not in reactions

    run(go())
