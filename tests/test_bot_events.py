"""Which Slack message events the bot acts on, and what it takes from them."""

from __future__ import annotations

from bot.events import DEFAULT_QUESTION, parse_event, question_of

BODY = {"team_id": "T1", "event_id": "Ev1"}
BOT = "UBOT"


def msg(**fields) -> dict:
    base = {"type": "message", "channel": "C1", "user": "UALICE", "ts": "1.000100", "text": "hi"}
    base.update(fields)
    return base


def test_upload_in_channel_is_taken_with_its_thread() -> None:
    inc = parse_event(BODY, msg(subtype="file_share", files=[{"id": "F1"}], text="Is it a scratch?"), BOT)
    assert inc is not None
    assert (inc.team, inc.channel, inc.thread_ts, inc.in_thread) == ("T1", "C1", "1.000100", False)
    assert inc.files == ({"id": "F1"},)
    assert question_of(inc, 2000) == "Is it a scratch?"
    assert inc.dedupe_keys == ("event:Ev1", "msg:C1:1.000100")


def test_reply_in_thread_keeps_the_parent_thread() -> None:
    inc = parse_event(BODY, msg(ts="2.0", thread_ts="1.000100"), BOT)
    assert inc is not None and inc.in_thread and inc.thread_ts == "1.000100"


def test_ignored_events() -> None:
    assert parse_event(BODY, msg(user=BOT), BOT) is None  # our own message
    assert parse_event(BODY, msg(bot_id="B2"), BOT) is None  # another bot
    assert parse_event(BODY, msg(subtype="bot_message"), BOT) is None
    assert parse_event(BODY, msg(subtype="message_changed"), BOT) is None
    assert parse_event(BODY, msg(subtype="message_deleted"), BOT) is None
    assert parse_event(BODY, msg(subtype="channel_join"), BOT) is None
    assert parse_event(BODY, {"type": "reaction_added"}, BOT) is None
    assert parse_event(BODY, msg(user=None), BOT) is None


def test_mention_is_stripped_and_flagged() -> None:
    inc = parse_event(BODY, msg(type="app_mention", text=f"<@{BOT}> what is the yield?"), BOT)
    assert inc is not None and inc.mentioned and inc.text == "what is the yield?"
    inc2 = parse_event(BODY, msg(text=f"hey <@{BOT}>"), BOT)
    assert inc2 is not None and inc2.mentioned and inc2.text == "hey"


def test_default_question_and_limits() -> None:
    inc = parse_event(BODY, msg(subtype="file_share", files=[{"id": "F1"}], text=""), BOT)
    assert inc is not None and question_of(inc, 2000) == DEFAULT_QUESTION
    long = parse_event(BODY, msg(subtype="file_share", files=[{"id": "F1"}], text="x" * 5000), BOT)
    assert long is not None and len(question_of(long, 100)) == 100


def test_slack_markup_becomes_plain_text() -> None:
    inc = parse_event(BODY, msg(text="see <https://fab.example/lot|lot 7> &lt;edge&gt; &amp; <#C2|yield>"), BOT)
    assert inc is not None
    assert question_of(inc, 2000) == "see lot 7 <edge> & yield"


def test_dm_is_recognised() -> None:
    inc = parse_event(BODY, msg(channel="D1", channel_type="im"), BOT)
    assert inc is not None and inc.is_dm
