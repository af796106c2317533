"""The bot's SQLite file: dedupe, the durable queue (order, backoff, restart), answers and votes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.store import BotStore, StoreError, thread_id_of
from model_server import wire


def enqueue(store: BotStore, thread_ts: str, question: str = "q", now: float = 1000.0, sha: str | None = None):
    return store.enqueue(team="T1", channel="C1", thread_ts=thread_ts, message_ts=thread_ts, user="U1",
                         question=question, image_sha256=sha, keep_trying_s=60, now=now)


def test_thread_id_is_valid_on_the_wire() -> None:
    tid = thread_id_of("T0123", "C0456", "1700000000.000100")
    assert tid == "T0123:C0456:1700000000.000100"
    assert wire.valid_thread_id(tid)


def test_dedupe_is_atomic_over_keys_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = BotStore(db)
    assert store.first_time("event:Ev1", "msg:C1:1.0")
    assert not store.first_time("event:Ev1", "msg:C1:1.0")  # Slack retry
    assert not store.first_time("event:Ev2", "msg:C1:1.0")  # same message, second event (app_mention)
    store.close()
    store = BotStore(db)
    assert not store.first_time("event:Ev1")
    assert store.forget_seen_before(cutoff=1e12) == 3
    assert store.first_time("event:Ev1")


def test_queue_answers_one_thread_in_order(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "bot.sqlite3")
    a1 = enqueue(store, "1.0", "first")
    a2 = enqueue(store, "1.0", "follow-up")
    b1 = enqueue(store, "2.0", "other thread")
    claimed = store.claim_due(now=2000.0, limit=10)
    assert [j.id for j in claimed] == [a1.id, b1.id]  # never two of one thread at once
    assert store.claim_due(now=2000.0) == []
    store.finish(a1.id, "done")
    assert [j.id for j in store.claim_due(now=2000.0)] == [a2.id]
    assert store.queue_counts() == {"pending": 0, "running": 2, "done": 1, "failed": 0}
    c1 = enqueue(store, "3.0", "busy thread")
    assert store.claim_due(now=2000.0, busy_threads=frozenset({c1.thread_id})) == []
    assert [j.id for j in store.claim_due(now=2000.0)] == [c1.id]


def test_retry_later_and_resume_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = BotStore(db)
    job = enqueue(store, "1.0", now=1000.0)
    store.set_placeholder(job.id, "1.5")
    (claimed,) = store.claim_due(now=1000.0)
    store.retry_later(claimed.id, at=1010.0, error="down", delayed_notice=True)
    assert store.claim_due(now=1005.0) == []
    assert store.next_due_at() == 1010.0
    (again,) = store.claim_due(now=1010.0)
    assert (again.attempts, again.delayed_notice, again.placeholder_ts, again.deadline) == (1, True, "1.5", 1060.0)
    store.close()  # the bot stops while the job is running
    store = BotStore(db)
    assert store.resume_interrupted() == 1
    (resumed,) = store.claim_due(now=1010.0)
    assert resumed.id == job.id and resumed.question == "q"


def test_images_threads_answers_and_votes(tmp_path: Path) -> None:
    store = BotStore(tmp_path / "bot.sqlite3")
    sha = store.put_image(b"\x89PNG...", "w.png", "image/png")
    assert store.put_image(b"\x89PNG...", "again.png", "image/png") == sha  # stored once
    job = enqueue(store, "1.0", sha=sha)
    assert store.knows_thread("T1", "C1", "1.0") and not store.knows_thread("T1", "C1", "9.0")
    assert store.thread_image(job.thread_id) == sha
    enqueue(store, "1.0", "follow-up")  # no image: the thread keeps its map
    assert store.thread_image(job.thread_id) == sha
    aid = store.record_answer(thread_id=job.thread_id, channel="C1", message_ts="1.5", user="U1", question="q",
                              answer="a", findings={"grid": [[1]]}, image_sha256=sha, model="m")
    assert store.record_vote(aid, "U1", "up") and store.record_vote(aid, "U2", "down")
    assert store.record_vote(aid, "U1", "down")  # a user changes their mind: one vote each
    assert not store.record_vote("missing", "U1", "up")
    with pytest.raises(ValueError, match="'up' or 'down'"):
        store.record_vote(aid, "U1", "meh")
    (voted,) = store.voted_answers()
    assert (voted.up, voted.down, voted.image_sha256) == (0, 2, sha)
    assert store.image(sha).data == b"\x89PNG..."


def test_unusable_database_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        BotStore(junk)
    with pytest.raises(StoreError, match="folder for the bot database does not exist"):
        BotStore(tmp_path / "missing" / "bot.sqlite3")
    other = tmp_path / "other.sqlite3"
    BotStore(other).close()
    with sqlite3.connect(other) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        BotStore(other)


def test_a_queued_upload_keeps_its_files_until_its_image_is_stored_and_old_files_gain_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    old = sqlite3.connect(path)  # a database written before uploads were queued with their files
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, thread_id TEXT NOT NULL, team TEXT NOT NULL,"
        " channel TEXT NOT NULL, thread_ts TEXT NOT NULL, message_ts TEXT NOT NULL, user TEXT NOT NULL,"
        " question TEXT NOT NULL, image_sha256 TEXT, placeholder_ts TEXT, status TEXT NOT NULL DEFAULT 'pending',"
        " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, deadline REAL NOT NULL,"
        " delayed_notice INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);"
    )
    old.close()
    store = BotStore(path)
    files = [{"id": "F1", "name": "map.png", "mimetype": "image/png"}]
    job = store.enqueue(team="T", channel="C", thread_ts="1.0", message_ts="1.0", user="U", question="q",
                        image_sha256=None, keep_trying_s=60, files=files)
    store.close()
    store = BotStore(path)  # survives a restart
    assert store.job(job.id).files == tuple(files) and store.job(job.id).image_sha256 is None
    sha = store.put_image(b"\x89PNG fake", "map.png", "image/png")
    assert store.set_job_image(job.id, sha).image_sha256 == sha
    assert store.thread_image(job.thread_id) == sha
    assert enqueue(store, "2.0").files == ()
    store.close()
