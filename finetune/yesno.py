"""Yes/no answers that agree with the recognition: "Is there a Scratch?" follows the patterns recognised.

The small model's own answers to "is there <pattern>?" are its weakest (the default model says yes
to a missing pattern about a quarter of the time), while its answer to "what defects does this
wafer show?" is its strongest. The server's thread API asks that recognition question whenever a
thread gets a map (its `findings`), and the evaluator does the same, so a yes/no answer can be checked against
it: when an answer opens with yes or no about one pattern and the recognised patterns say the
opposite, the answer is rewritten from them with `data_tools.answers.yesno_answer` (placed on the
map with `data_tools.locate`), in the question's language. Answers that agree, and answers that
are not yes/no about one pattern, are left as the model wrote them. "Is this wafer ok?" asks
about the wafer as a whole (`data_tools.phrasing.asks_if_normal`): the corpus barely has it, and the
model answers it as if asked about one pattern ("Yes, there is a Center pattern."), so its answer is
kept only when it opens with the right yes or no and names no single pattern that way; otherwise
it is `data_tools.answers.normal_answer` of the recognised patterns. The stateless chat
completions API, which keeps no findings, asks the recognition question only when an answer
needs the check (`needs_recognition`); a streamed answer is sent as generated.

On the thread API an answer to a question that asks what the map shows, asked again later in the thread
("are you sure?", "What pattern is it then?") or worded otherwise than the server's own question, is held to
the thread's findings as well (`ground_answer`): when it names other patterns, it is the recognition answer
of the findings, so the prose never contradicts the "Patterns:" line shown above it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from data_tools.answers import normal_answer, recognition_answer, yesno_answer
from data_tools.dialogue import MapContext
from data_tools.phrasing import (
    RECOGNITION_QUESTIONS,
    asks_if_normal,
    language_of,
    opening_question,
    question_as_written,
)
from data_tools.taxonomy import canonical_set
from data_tools.wafer_map import WaferMap
from finetune.answer_parser import mentions, parse_answer

_YES = re.compile(r"^\s*(?:yes\b|是的)", re.IGNORECASE)
_NO = re.compile(r"^\s*(?:no\b|没有|不存在)", re.IGNORECASE)
#: The opening of a yes/no answer about one pattern: as the corpus words it (`data_tools.answers.yesno_answer`:
#: "Yes, there is a Scratch pattern.", "没有，不存在划痕缺陷。"), or yes/no and the name alone ("No, Donut."), also
#: when the two halves disagree ("No, there is a Center pattern.", "没有，存在中心缺陷。", "是的，不存在局部缺陷。":
#: runs/v29, trained from scratch, wrote such answers to about one yes/no question in twelve; the yes or no counts).
_YESNO_OPENING = re.compile(
    r"^\s*(?:(?:yes|no)\b,?\s*(?:there\s+is\s+(?:an?|no)\s+)?[a-z][a-z-]*(?:\s[a-z][a-z-]*)?(?:\s+pattern)?\s*(?:[.!]|$)"
    r"|(?:(?:是的|没有)，)?不?存在.+?缺陷)",
    re.IGNORECASE,
)


def said_yes(answer: str) -> bool | None:
    """True when the answer opens with yes, False with no, None otherwise."""
    if _YES.match(answer):
        return True
    if _NO.match(answer):
        return False
    return None


def asked_pattern(question: str, answer: str) -> str | None:
    """The one pattern a yes/no exchange is about, or None when `answer` is not a yes/no answer about one.

    The answer must open as the corpus's yes/no answers do ("Yes, there is a Scratch pattern.",
    "没有，不存在划痕缺陷。"), so "Is this wafer normal?" – "No, it shows a Center pattern." is not
    taken for a question about the Center. The pattern is the question's when it names one, else
    the answer's. The question counts as the model read it (`question_as_written`): a sentence of
    context around it naming another pattern ("Looks like a Center to me. Is there a scratch?") is not
    asked about.
    """
    opening = _YESNO_OPENING.match(answer)
    if opening is None:
        return None
    question = question_as_written(question)
    for text, names_only in ((question, False), (opening.group(0), True)):
        keys = {key for key, _negated in mentions(text, names_only=names_only)}
        if len(keys) == 1:
            return keys.pop()
        if keys:
            return None  # several patterns named: not a question about one
    return None


def yesno_pattern(question: str, answer: str) -> str | None:
    """The pattern when `answer` opens with yes or no about one pattern (so it can be checked), else None."""
    return asked_pattern(question, answer) if said_yes(answer) is not None else None


def needs_recognition(question: str, answer: str) -> bool:
    """True when `ground_yesno` would check `answer` against the recognised patterns."""
    return asks_if_normal(question) or yesno_pattern(question, answer) is not None


def ground_yesno(question: str, answer: str, wafer: WaferMap | None, recognised: Sequence[str] | None,
                 cautions: Sequence[str] = ()) -> str:
    """`answer`, or the yes/no answer the recognised patterns give when it says the opposite of them.

    `recognised` holds the canonical pattern keys recognised on `wafer` (() for a normal wafer,
    None when unknown: then nothing is checked). `cautions`, in the question's language (the
    findings' caveats), keep "is this wafer ok?" from being answered yes when no pattern was recognised.
    """
    if wafer is None or recognised is None:
        return answer
    if asks_if_normal(question):
        normal = not recognised and not cautions  # a caution is no ground for "yes, it is normal"
        if said_yes(answer) is normal and asked_pattern(question, answer) is None:
            return answer
        return normal_answer(recognised, language_of(question), cautions)
    key = yesno_pattern(question, answer)
    if key is None or (key in recognised) == said_yes(answer):
        return answer
    context = MapContext.of(wafer, recognised)
    location = next((loc for loc in context.locations if loc.key == key), None)
    return yesno_answer(key, context.patterns, language_of(question), location, context.facts)


def asks_what_it_shows(question: str) -> bool:
    """True when `question`, as the model reads it, is a recognition question ("What pattern is it then?",
    "are you sure?", "you see anything unusual?")."""
    return opening_question(question) in RECOGNITION_QUESTIONS[language_of(question)]


def ground_answer(question: str, answer: str, wafer: WaferMap | None, recognised: Sequence[str] | None,
                  cautions: Sequence[str] = ()) -> str:
    """`ground_yesno`, and for a question asking what the map shows, the findings' recognition answer in
    place of an answer that names other patterns than `recognised` (the thread API's findings)."""
    if wafer is not None and recognised is not None and asks_what_it_shows(question) and not asks_if_normal(question):
        if not recognised and cautions:
            return answer  # findings of "normal" that carry a caveat are no ground to overrule a pattern named
        stated = parse_answer(answer)
        if stated is not None and set(canonical_set(stated)) != set(canonical_set(recognised)):
            return recognition_answer(recognised, language_of(question))
        return answer
    return ground_yesno(question, answer, wafer, recognised, cautions)
