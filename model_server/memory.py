"""Per-thread conversation memory in one SQLite file (sqlite-utils, WAL mode).

Tables:
    threads(thread_id, created_at, updated_at, image_sha256, findings, model)
    turns(id, thread_id, role, text, created_at, image_sha256)   -- image_sha256 on the user turn that brought it
    images(sha256, data, grid, rows, cols, created_at)            -- each image once, by content hash
    idempotency_keys(thread_id, key, question_sha256, answer, findings, model, created_at)
                                                                  -- the reply to each keyed message

A question and its answer are written in one transaction (`record_exchange`), so a process
killed mid-request leaves the thread as it was before that request: never a question without
its answer, never a half-written row. WAL with synchronous=NORMAL keeps the file consistent
across crashes of the process.

Idempotency: an exchange recorded with a client's idempotency key also stores its reply
(answer, findings, model) under ``(thread_id, key)``, in the same transaction as the turns, so
`replay` finds it after a restart too and never finds a key without its turns. Keys are
forgotten with their thread, after `idempotency_ttl_s` (0: only with the thread), and beyond
the newest ``max_stored_turns // 2`` per thread (one key per stored question-answer pair).

Bounded: at most `max_threads` threads (least recently updated evicted first), threads idle
longer than `ttl_s` are forgotten, at most `max_stored_turns` turns per thread. Images no
thread refers to any more are deleted with their last thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from data_tools.wafer_map import WaferMap
from model_server import wire

SCHEMA_VERSION = 2  # 2: idempotency_keys


class ThreadMemoryError(RuntimeError):
    """The memory file cannot be opened or used (message says which file and why)."""


@dataclass(frozen=True)
class StoredImage:
    """An image as received, with the die grid read from it."""

    sha256: str
    data: bytes
    grid: np.ndarray

    @classmethod
    def from_bytes(cls, data: bytes, wafer: WaferMap) -> StoredImage:
        return cls(hashlib.sha256(data).hexdigest(), data, wafer.grid)

    @property
    def wafer(self) -> WaferMap:
        return WaferMap(self.grid)


@dataclass(frozen=True)
class StoredTurn:
    role: str
    text: str
    created_at: float
    image_sha256: str | None = None


@dataclass(frozen=True)
class StoredThread:
    thread_id: str
    created_at: float
    updated_at: float
    image_sha256: str | None
    findings: dict | None
    model: str | None
    turns: tuple[StoredTurn, ...]


@dataclass(frozen=True)
class StoredReply:
    """The reply given to a message sent with an idempotency key, kept to answer that key's repeats."""

    key: str
    question_sha256: str
    answer: str
    findings: dict | None
    model: str | None
    created_at: float

    def same_question(self, question: str) -> bool:
        """True if `question` is the one this reply answered."""
        return question_sha256(question) == self.question_sha256


def question_sha256(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ThreadContext:
    """What the next answer in a thread needs: the thread's map and the turns about it, trimmed."""

    exists: bool
    image_sha256: str | None
    wafer: WaferMap | None  # the die grid read from that image
    findings: dict | None
    history: tuple[StoredTurn, ...]  # oldest first; only turns since the current image was sent


class ThreadMemory:
    """Thread memory backed by one SQLite file; safe to use from several threads of one process.

    The die grids of the last `wafer_cache_size` images read are kept decoded in memory (an image
    never changes under its content hash), so a follow-up does not parse its map again.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_threads: int = 10_000,
        ttl_s: float = 30 * 24 * 3600.0,
        max_stored_turns: int = 200,
        idempotency_ttl_s: float = 24 * 3600.0,
        wafer_cache_size: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_threads < 1 or max_stored_turns < 1 or ttl_s < 0 or idempotency_ttl_s < 0 or wafer_cache_size < 0:
            raise ValueError(
                f"memory limits must be positive: max_threads={max_threads}, "
                f"max_stored_turns={max_stored_turns}, ttl_s={ttl_s}, idempotency_ttl_s={idempotency_ttl_s}, "
                f"wafer_cache_size={wafer_cache_size}"
            )
        self.path = Path(path)
        self.max_threads = max_threads
        self.ttl_s = ttl_s
        self.max_stored_turns = max_stored_turns
        self.idempotency_ttl_s = idempotency_ttl_s
        self.max_keys_per_thread = max(1, max_stored_turns // 2)
        self._clock = clock
        self._lock = threading.RLock()
        self.wafer_cache_size = wafer_cache_size
        self._wafers: OrderedDict[str, WaferMap] = OrderedDict()  # image sha256 -> its die grid
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")
            self._create_schema()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise ThreadMemoryError(f"cannot open thread memory at {self.path}: {exc}") from exc

    def _create_schema(self) -> None:
        db = self.db
        with db.conn:
            db["threads"].create(
                {"thread_id": str, "created_at": float, "updated_at": float, "image_sha256": str,
                 "findings": str, "model": str},
                pk="thread_id", if_not_exists=True,
            )
            db["turns"].create(
                {"id": int, "thread_id": str, "role": str, "text": str, "created_at": float, "image_sha256": str},
                pk="id", if_not_exists=True,
            )
            db["images"].create(
                {"sha256": str, "data": bytes, "grid": str, "rows": int, "cols": int, "created_at": float},
                pk="sha256", if_not_exists=True,
            )
            db["idempotency_keys"].create(
                {"thread_id": str, "key": str, "question_sha256": str, "answer": str, "findings": str,
                 "model": str, "created_at": float},
                pk=("thread_id", "key"), if_not_exists=True,
            )
            db["idempotency_keys"].create_index(["created_at"], if_not_exists=True)
            db["turns"].create_index(["thread_id", "id"], if_not_exists=True)
            db["threads"].create_index(["updated_at"], if_not_exists=True)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # ------------------------------------------------------------------ reading
    def _expired(self, updated_at: float) -> bool:
        return self.ttl_s > 0 and updated_at < self._clock() - self.ttl_s

    def _thread_row(self, thread_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM threads WHERE thread_id = ?", [thread_id]))
        if not rows or self._expired(rows[0]["updated_at"]):
            return None
        return rows[0]

    def get(self, thread_id: str) -> StoredThread | None:
        """The whole stored thread, or None if unknown or expired."""
        with self._lock:
            row = self._thread_row(thread_id)
            if row is None:
                return None
            turns = tuple(
                StoredTurn(t["role"], t["text"], t["created_at"], t["image_sha256"])
                for t in self.db.query(
                    "SELECT role, text, created_at, image_sha256 FROM turns WHERE thread_id = ? ORDER BY id",
                    [thread_id],
                )
            )
        return StoredThread(
            thread_id=row["thread_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            image_sha256=row["image_sha256"],
            findings=wire.loads(row["findings"]) if row["findings"] else None,
            model=row["model"],
            turns=turns,
        )

    def image(self, sha256: str) -> StoredImage | None:
        """The stored image as received, with its die grid (from `wafer`)."""
        with self._lock:
            rows = list(self.db.query("SELECT data FROM images WHERE sha256 = ?", [sha256]))
            wafer = self.wafer(sha256) if rows else None
        if not rows or wafer is None:
            return None
        return StoredImage(sha256, bytes(rows[0]["data"]), wafer.grid)

    def wafer(self, sha256: str) -> WaferMap | None:
        """The die grid read from the stored image `sha256` (decoded once, then from memory)."""
        with self._lock:
            wafer = self._wafers.get(sha256)
            if wafer is not None:
                self._wafers.move_to_end(sha256)
                return wafer
            rows = list(self.db.query("SELECT grid FROM images WHERE sha256 = ?", [sha256]))
            if not rows:
                return None
            wafer = WaferMap(np.asarray(json.loads(rows[0]["grid"]), dtype=np.uint8))
            if self.wafer_cache_size > 0:
                self._wafers[sha256] = wafer
                while len(self._wafers) > self.wafer_cache_size:
                    self._wafers.popitem(last=False)
            return wafer

    def context(self, thread_id: str, max_turns: int) -> ThreadContext:
        """The thread's current image and the last `max_turns` turns since that image arrived.

        The history always starts with a user turn (a trimmed pair is dropped whole). Only those
        turns are read, not the whole stored thread.
        """
        with self._lock:
            row = self._thread_row(thread_id)
            if row is None:
                return ThreadContext(False, None, None, None, ())
            image_sha = row["image_sha256"]
            turns: list[StoredTurn] = []
            if max_turns > 0:
                newest_first = self.db.execute(
                    "SELECT role, text, created_at, image_sha256 FROM turns WHERE thread_id = ? AND id >= "
                    "coalesce((SELECT max(id) FROM turns WHERE thread_id = ? AND image_sha256 = ?), 0) "
                    "ORDER BY id DESC LIMIT ?",
                    [thread_id, thread_id, image_sha, max_turns],
                ).fetchall()
                turns = [StoredTurn(*t) for t in reversed(newest_first)]
            wafer = self.wafer(image_sha) if image_sha else None
        while turns and turns[0].role != "user":
            turns.pop(0)
        findings = wire.loads(row["findings"]) if row["findings"] else None
        return ThreadContext(True, image_sha if wafer is not None else None, wafer, findings, tuple(turns))

    def replay(self, thread_id: str, key: str) -> StoredReply | None:
        """The stored reply to the message sent with `key` on this thread; None if unknown or forgotten."""
        with self._lock:
            if self._thread_row(thread_id) is None:
                return None
            rows = list(self.db.query(
                "SELECT key, question_sha256, answer, findings, model, created_at FROM idempotency_keys "
                "WHERE thread_id = ? AND key = ?", [thread_id, key]))
        if not rows or self._key_expired(rows[0]["created_at"]):
            return None
        row = rows[0]
        return StoredReply(
            key=row["key"],
            question_sha256=row["question_sha256"],
            answer=row["answer"],
            findings=wire.loads(row["findings"]) if row["findings"] else None,
            model=row["model"],
            created_at=row["created_at"],
        )

    def _key_expired(self, created_at: float) -> bool:
        return self.idempotency_ttl_s > 0 and created_at < self._clock() - self.idempotency_ttl_s

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM threads").fetchone()[0])

    # ------------------------------------------------------------------ writing
    def record_exchange(
        self,
        thread_id: str,
        question: str,
        answer: str,
        *,
        image: StoredImage | None = None,
        findings: dict | None = None,
        model: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Store a question and its answer (and a newly sent image with its findings) in one transaction.

        With `idempotency_key`, the reply (answer, the thread's findings after this exchange, model)
        is stored under that key in the same transaction, for `replay`.
        """
        now = self._clock()
        with self._lock, self.db.conn:
            row = self._thread_row(thread_id)
            if row is None:
                # an expired thread with this id is replaced by a fresh one
                self._delete_rows(thread_id)
            if image is not None:
                self.db.execute(
                    "INSERT OR IGNORE INTO images (sha256, data, grid, rows, cols, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [image.sha256, image.data, json.dumps(image.grid.astype(int).tolist()),
                     int(image.grid.shape[0]), int(image.grid.shape[1]), now],
                )
            image_sha = image.sha256 if image is not None else (row["image_sha256"] if row else None)
            findings_json = wire.dumps(findings) if findings is not None else (row["findings"] if row else None)
            self.db.execute(
                "INSERT INTO threads (thread_id, created_at, updated_at, image_sha256, findings, model) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
                "image_sha256 = excluded.image_sha256, findings = excluded.findings, model = excluded.model",
                [thread_id, now, now, image_sha, findings_json, model],
            )
            self.db.execute(
                "INSERT INTO turns (thread_id, role, text, created_at, image_sha256) VALUES (?, 'user', ?, ?, ?)",
                [thread_id, question, now, image.sha256 if image is not None else None],
            )
            self.db.execute(
                "INSERT INTO turns (thread_id, role, text, created_at, image_sha256) VALUES (?, 'assistant', ?, ?, NULL)",
                [thread_id, answer, now],
            )
            if idempotency_key is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (thread_id, key, question_sha256, answer, findings, "
                    "model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [thread_id, idempotency_key, question_sha256(question), answer, findings_json, model, now],
                )
                self._prune_keys(thread_id, now)
            self.db.execute(
                "DELETE FROM turns WHERE thread_id = ? AND id NOT IN "
                "(SELECT id FROM turns WHERE thread_id = ? ORDER BY id DESC LIMIT ?)",
                [thread_id, thread_id, self.max_stored_turns],
            )
            if row is None:
                self._evict_locked(now)

    def delete(self, thread_id: str) -> bool:
        """Forget a thread, its turns and (if no other thread uses it) its image. True if it existed."""
        with self._lock, self.db.conn:
            existed = self._thread_row(thread_id) is not None
            self._delete_rows(thread_id)
            self._delete_orphan_images()
        return existed

    def evict(self) -> int:
        """Forget expired threads (and idempotency keys) and the least recently used threads beyond
        `max_threads`. Returns how many threads."""
        with self._lock, self.db.conn:
            return self._evict_locked(self._clock())

    def _prune_keys(self, thread_id: str, now: float) -> None:
        if self.idempotency_ttl_s > 0:
            self.db.execute("DELETE FROM idempotency_keys WHERE thread_id = ? AND created_at < ?",
                            [thread_id, now - self.idempotency_ttl_s])
        self.db.execute(
            "DELETE FROM idempotency_keys WHERE thread_id = ? AND rowid NOT IN "
            "(SELECT rowid FROM idempotency_keys WHERE thread_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?)",
            [thread_id, thread_id, self.max_keys_per_thread],
        )

    def _delete_rows(self, thread_id: str) -> None:
        self.db.execute("DELETE FROM idempotency_keys WHERE thread_id = ?", [thread_id])
        self.db.execute("DELETE FROM turns WHERE thread_id = ?", [thread_id])
        self.db.execute("DELETE FROM threads WHERE thread_id = ?", [thread_id])

    def _delete_orphan_images(self) -> None:
        orphans = [r[0] for r in self.db.execute(
            "SELECT sha256 FROM images WHERE sha256 NOT IN (SELECT image_sha256 FROM threads WHERE image_sha256 "
            "IS NOT NULL) AND sha256 NOT IN (SELECT image_sha256 FROM turns WHERE image_sha256 IS NOT NULL)"
        ).fetchall()]
        for sha256 in orphans:
            self.db.execute("DELETE FROM images WHERE sha256 = ?", [sha256])
            self._wafers.pop(sha256, None)  # a forgotten image leaves no copy in memory either

    def _evict_locked(self, now: float) -> int:
        doomed: list[str] = []
        if self.ttl_s > 0:
            doomed += [r[0] for r in self.db.execute(
                "SELECT thread_id FROM threads WHERE updated_at < ?", [now - self.ttl_s]).fetchall()]
        total = int(self.db.execute("SELECT count(*) FROM threads").fetchone()[0]) - len(doomed)
        if total > self.max_threads:
            doomed += [r[0] for r in self.db.execute(
                "SELECT thread_id FROM threads WHERE updated_at >= ? ORDER BY updated_at, thread_id LIMIT ?",
                [now - self.ttl_s if self.ttl_s > 0 else float("-inf"), total - self.max_threads]).fetchall()]
        for thread_id in doomed:
            self._delete_rows(thread_id)
        if doomed:
            self._delete_orphan_images()
        if self.idempotency_ttl_s > 0:
            self.db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", [now - self.idempotency_ttl_s])
        return len(doomed)

    def integrity_ok(self) -> bool:
        """SQLite's own consistency check of the file."""
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
