"""The bot's one SQLite file: event dedupe, the durable question queue, threads, answers and feedback.

Everything the bot must not lose across a restart lives here: a question waiting for the
model server (with its image), which Slack events were already handled (so Slack's retries
never produce a second answer), which threads the bot takes part in, and every answer with
the image it was about and the 👍/👎 votes it received (exported as corpus records by
`defect-glm data feedback-export`). Images are stored once, keyed by their SHA-256.

The store is used from one asyncio thread; every call is a short local transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (key TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, name TEXT NOT NULL, mimetype TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY, team TEXT NOT NULL, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
    image_sha256 TEXT REFERENCES images(sha256), created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id TEXT NOT NULL, team TEXT NOT NULL, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
    message_ts TEXT NOT NULL, user TEXT NOT NULL, question TEXT NOT NULL, image_sha256 TEXT REFERENCES images(sha256),
    placeholder_ts TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, deadline REAL NOT NULL, delayed_notice INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, files TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, channel TEXT NOT NULL, message_ts TEXT NOT NULL,
    user TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL, findings TEXT NOT NULL,
    image_sha256 TEXT REFERENCES images(sha256), model TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    answer_id TEXT NOT NULL REFERENCES answers(id), user TEXT NOT NULL, vote TEXT NOT NULL CHECK (vote IN ('up', 'down')),
    created_at REAL NOT NULL, PRIMARY KEY (answer_id, user)
);
"""


class StoreError(RuntimeError):
    """The bot database cannot be opened or has an unexpected layout."""


@dataclass(frozen=True)
class Job:
    """One queued question for the model server."""

    id: int
    thread_id: str
    team: str
    channel: str
    thread_ts: str
    message_ts: str
    user: str
    question: str
    image_sha256: str | None
    placeholder_ts: str | None
    status: str
    attempts: int
    next_attempt_at: float
    deadline: float
    delayed_notice: bool
    last_error: str | None
    created_at: float
    files: tuple[dict, ...] = ()  # the Slack files of a map upload, until its image is downloaded


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    data: bytes
    name: str
    mimetype: str


@dataclass(frozen=True)
class VotedAnswer:
    """An answer with the image it was about and its 👍/👎 counts (what feedback-export reads)."""

    id: str
    thread_id: str
    question: str
    answer: str
    findings: dict
    image_sha256: str | None
    model: str
    created_at: float
    up: int
    down: int


def thread_id_of(team: str, channel: str, thread_ts: str) -> str:
    """The thread id shared with model_server: team + channel + thread timestamp (``T1:C2:1700000000.000100``)."""
    return f"{team}:{channel}:{thread_ts}"


class BotStore:
    """Open (creating if needed) the bot's SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"the folder for the bot database does not exist: {self.path.parent}")
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            if "files" not in {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}:
                self._db.execute("ALTER TABLE jobs ADD COLUMN files TEXT")  # files of not yet downloaded uploads
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable SQLite database for the bot: {exc}") from exc
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row["value"]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has bot schema version {row['value']}; this bot expects {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ dedupe
    def first_time(self, *keys: str, now: float | None = None) -> bool:
        """Record `keys` as seen; True only if none of them had been seen before (atomic)."""
        now = time.time() if now is None else now
        keys = tuple(k for k in keys if k)
        if not keys:
            return True
        with self._tx():
            marks = ",".join("?" * len(keys))
            seen = self._db.execute(f"SELECT 1 FROM seen_events WHERE key IN ({marks}) LIMIT 1", keys).fetchone()
            self._db.executemany("INSERT OR IGNORE INTO seen_events VALUES (?, ?)", [(k, now) for k in keys])
        return seen is None

    def forget_seen_before(self, cutoff: float) -> int:
        with self._tx():
            return self._db.execute("DELETE FROM seen_events WHERE seen_at < ?", (cutoff,)).rowcount

    # ------------------------------------------------------------ images and threads
    def put_image(self, data: bytes, name: str, mimetype: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?)", (sha, data, name, mimetype, time.time())
            )
        return sha

    def image(self, sha256: str | None) -> StoredImage | None:
        if not sha256:
            return None
        row = self._db.execute("SELECT * FROM images WHERE sha256=?", (sha256,)).fetchone()
        return None if row is None else StoredImage(row["sha256"], bytes(row["data"]), row["name"], row["mimetype"])

    def touch_thread(self, team: str, channel: str, thread_ts: str, image_sha256: str | None = None) -> str:
        """Remember that the bot takes part in this thread (and its current image); returns the thread id."""
        tid = thread_id_of(team, channel, thread_ts)
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT INTO threads VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(thread_id) DO UPDATE SET "
                "image_sha256=COALESCE(excluded.image_sha256, threads.image_sha256), updated_at=excluded.updated_at",
                (tid, team, channel, thread_ts, image_sha256, now, now),
            )
        return tid

    def knows_thread(self, team: str, channel: str, thread_ts: str) -> bool:
        row = self._db.execute("SELECT 1 FROM threads WHERE thread_id=?", (thread_id_of(team, channel, thread_ts),))
        return row.fetchone() is not None

    def thread_image(self, thread_id: str) -> str | None:
        row = self._db.execute("SELECT image_sha256 FROM threads WHERE thread_id=?", (thread_id,)).fetchone()
        return None if row is None else row["image_sha256"]

    # ------------------------------------------------------------ queue
    def enqueue(
        self,
        *,
        team: str,
        channel: str,
        thread_ts: str,
        message_ts: str,
        user: str,
        question: str,
        image_sha256: str | None,
        keep_trying_s: float,
        now: float | None = None,
        files: list[dict] | tuple[dict, ...] = (),
    ) -> Job:
        """Queue a question; `files` (a map upload's Slack files) are downloaded by the worker, so the
        upload is on disk before any network call and survives a crash."""
        now = time.time() if now is None else now
        tid = self.touch_thread(team, channel, thread_ts, image_sha256)
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO jobs (thread_id, team, channel, thread_ts, message_ts, user, question, image_sha256,"
                " next_attempt_at, deadline, created_at, updated_at, files) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (tid, team, channel, thread_ts, message_ts, user, question, image_sha256, now, now + keep_trying_s,
                 now, now, json.dumps(list(files)) if files else None),
            )
        job = self.job(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def job(self, job_id: int) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def set_job_image(self, job_id: int, sha256: str) -> Job:
        """The downloaded image of a map upload: now the job's and its thread's image."""
        with self._tx():
            self._db.execute("UPDATE jobs SET image_sha256=?, updated_at=? WHERE id=?", (sha256, time.time(), job_id))
            self._db.execute(
                "UPDATE threads SET image_sha256=?, updated_at=? WHERE thread_id=(SELECT thread_id FROM jobs WHERE id=?)",
                (sha256, time.time(), job_id),
            )
        job = self.job(job_id)
        assert job is not None
        return job

    def set_placeholder(self, job_id: int, ts: str) -> None:
        with self._tx():
            self._db.execute("UPDATE jobs SET placeholder_ts=?, updated_at=? WHERE id=?", (ts, time.time(), job_id))

    def claim_due(self, now: float | None = None, limit: int = 4, busy_threads: frozenset[str] = frozenset()) -> list[Job]:
        """Mark up to `limit` due jobs running — at most one per thread, oldest first, never overtaking an
        earlier unfinished question of the same thread, none of `busy_threads` (still being worked on by
        this process) — and return them."""
        now = time.time() if now is None else now
        busy = tuple(busy_threads)
        with self._tx():
            rows = self._db.execute(
                "SELECT * FROM jobs j WHERE status='pending' AND next_attempt_at<=? AND NOT EXISTS ("
                " SELECT 1 FROM jobs e WHERE e.thread_id=j.thread_id AND e.id<j.id AND e.status IN ('pending','running'))"
                " AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.thread_id=j.thread_id AND r.status='running')"
                f" AND j.thread_id NOT IN ({','.join('?' * len(busy))})"
                " ORDER BY id LIMIT ?",
                (now, *busy, limit),
            ).fetchall()
            for row in rows:
                self._db.execute("UPDATE jobs SET status='running', updated_at=? WHERE id=?", (now, row["id"]))
        return [_job(r) for r in rows]

    def finish(self, job_id: int, status: str, error: str | None = None) -> None:
        if status not in ("done", "failed"):
            raise ValueError(f"a finished job is 'done' or 'failed', got {status!r}")
        with self._tx():
            self._db.execute(
                "UPDATE jobs SET status=?, last_error=?, updated_at=? WHERE id=?", (status, error, time.time(), job_id)
            )

    def retry_later(self, job_id: int, at: float, error: str, delayed_notice: bool) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE jobs SET status='pending', attempts=attempts+1, next_attempt_at=?, last_error=?,"
                " delayed_notice=MAX(delayed_notice, ?), updated_at=? WHERE id=?",
                (at, error, int(delayed_notice), time.time(), job_id),
            )

    def resume_interrupted(self) -> int:
        """Jobs left 'running' by a stopped bot become pending again; returns how many."""
        with self._tx():
            return self._db.execute("UPDATE jobs SET status='pending' WHERE status='running'").rowcount

    def next_due_at(self) -> float | None:
        row = self._db.execute("SELECT MIN(next_attempt_at) AS t FROM jobs WHERE status='pending'").fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    def queue_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    # ------------------------------------------------------------ answers and feedback
    def record_answer(
        self,
        *,
        thread_id: str,
        channel: str,
        message_ts: str,
        user: str,
        question: str,
        answer: str,
        findings: dict,
        image_sha256: str | None,
        model: str,
    ) -> str:
        answer_id = uuid.uuid4().hex
        with self._tx():
            self._db.execute(
                "INSERT INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (answer_id, thread_id, channel, message_ts, user, question, answer, json.dumps(findings),
                 image_sha256, model, time.time()),
            )
        return answer_id

    def record_vote(self, answer_id: str, user: str, vote: str) -> bool:
        """Store (or change) `user`'s vote on an answer; False when the answer is unknown."""
        if vote not in ("up", "down"):
            raise ValueError(f"a vote is 'up' or 'down', got {vote!r}")
        if self._db.execute("SELECT 1 FROM answers WHERE id=?", (answer_id,)).fetchone() is None:
            return False
        with self._tx():
            self._db.execute(
                "INSERT INTO feedback VALUES (?,?,?,?) ON CONFLICT(answer_id, user) DO UPDATE SET "
                "vote=excluded.vote, created_at=excluded.created_at",
                (answer_id, user, vote, time.time()),
            )
        return True

    def voted_answers(self) -> list[VotedAnswer]:
        """Every answer that received at least one vote, with its vote counts, oldest first."""
        rows = self._db.execute(
            "SELECT a.*, SUM(f.vote='up') AS up, SUM(f.vote='down') AS down FROM answers a"
            " JOIN feedback f ON f.answer_id=a.id GROUP BY a.id ORDER BY a.created_at, a.id"
        ).fetchall()
        return [_voted(r) for r in rows]

    def thread_answers(self, thread_id: str) -> list[VotedAnswer]:
        """Every answer given in a thread (votes counted, possibly zero), oldest first."""
        rows = self._db.execute(
            "SELECT a.*, COALESCE(SUM(f.vote='up'), 0) AS up, COALESCE(SUM(f.vote='down'), 0) AS down FROM answers a"
            " LEFT JOIN feedback f ON f.answer_id=a.id WHERE a.thread_id=? GROUP BY a.id ORDER BY a.created_at, a.id",
            (thread_id,),
        ).fetchall()
        return [_voted(r) for r in rows]

    # ------------------------------------------------------------ internals
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=int(row["id"]), thread_id=row["thread_id"], team=row["team"], channel=row["channel"],
        thread_ts=row["thread_ts"], message_ts=row["message_ts"], user=row["user"], question=row["question"],
        image_sha256=row["image_sha256"], placeholder_ts=row["placeholder_ts"], status=row["status"],
        attempts=int(row["attempts"]), next_attempt_at=float(row["next_attempt_at"]), deadline=float(row["deadline"]),
        delayed_notice=bool(row["delayed_notice"]), last_error=row["last_error"], created_at=float(row["created_at"]),
        files=tuple(json.loads(row["files"])) if row["files"] else (),
    )


def _voted(row: sqlite3.Row) -> VotedAnswer:
    return VotedAnswer(
        id=row["id"], thread_id=row["thread_id"], question=row["question"], answer=row["answer"],
        findings=json.loads(row["findings"]), image_sha256=row["image_sha256"], model=row["model"],
        created_at=float(row["created_at"]), up=int(row["up"] or 0), down=int(row["down"] or 0),
    )
