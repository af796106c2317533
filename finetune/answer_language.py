"""Keeps each generated answer in the language of its question.

The small model answers in the question's language when the question is worded as in training, but
a wording it never saw can tip it into the other language: asked "Any thoughts?" about 100 test maps,
v13 answered 16 in Chinese, and "有啥想法？" 17 in English. The answers of the corpus never mix the two
(English answers hold no Chinese character; Chinese ones no English word but the acronyms CMP, RTA,
SEM, EBR, FOUP, the compass codes and "mm"), so generation forbids, row by row, the tokens only the
other language writes: for an English question every token with a Chinese character or part of
one (English answers' one character beyond ASCII, "—", is a token of its own), for a Chinese question
every token with a run of two lower-case Latin letters but "mm"; the location slots of the other
language too (`finetune.location_slots`).

It applies to models whose tokenizer was trained here (with number slots, `finetune.number_slots.has_slots`),
whose answers are the corpus's, unless their config says `keep_answer_language: false` (a hand-set test
model that answers one fixed text to every question); a large model's own tokenizer and answers are left alone.
`tests/test_finetune_answer_language.py` checks that no answer the corpus writes loses a token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from data_tools.phrasing import language_of
from finetune.location_slots import LOCATION_SLOTS, location_token
from finetune.number_slots import has_slots

#: A run of lower-case Latin letters, an English word or a piece of one.
_LATIN_WORD = re.compile(r"[a-z]{2,}")
#: The lower-case Latin words a Chinese answer of the corpus holds ("晶圆边缘 3 mm").
CHINESE_ANSWER_LATIN = frozenset({"mm"})
_CACHE_ATTRIBUTE = "_defect_glm_foreign_tokens"
#: The config attribute that turns the rule off for a model trained here (absent: on).
KEEP_ATTRIBUTE = "keep_answer_language"


def foreign_tokens(tokenizer: Any) -> dict[str, list[int]]:
    """For each language, the ids of the tokens only the other language writes (cached on the tokenizer)."""
    cached = getattr(tokenizer, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return cached
    added = set(tokenizer.get_added_vocab().values())
    foreign: dict[str, list[int]] = {"en": [], "zh": []}
    for token_id in range(len(tokenizer)):
        if token_id in added:
            continue
        text = tokenizer.decode([token_id])
        if language_of(text) == "zh" or "\ufffd" in text:  # a Chinese character, or bytes of one
            foreign["en"].append(token_id)
        if any(word not in CHINESE_ANSWER_LATIN for word in _LATIN_WORD.findall(text)):
            foreign["zh"].append(token_id)
    for place, language in LOCATION_SLOTS:
        other = "zh" if language == "en" else "en"
        token_id = tokenizer.convert_tokens_to_ids(location_token(place, language))
        if token_id in added:
            foreign[other].append(token_id)
    setattr(tokenizer, _CACHE_ATTRIBUTE, foreign)
    return foreign


class AnswerLanguage:
    """Logits processor that gives each row's foreign tokens no chance (`foreign_tokens`); rows are in
    the order of the batch, one language each."""

    def __init__(self, tokenizer: Any, languages: Sequence[str]) -> None:
        self.foreign = foreign_tokens(tokenizer)
        self.languages = list(languages)
        self._mask: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._mask is None or self._mask.shape != scores.shape:
            mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            for row, language in enumerate(self.languages):
                ids = [i for i in self.foreign[language] if i < scores.shape[1]]
                mask[row, ids] = True
            self._mask = mask
        return scores.masked_fill(self._mask, float("-inf"))


def answer_language(model: Any, tokenizer: Any, questions: Sequence[str]) -> AnswerLanguage | None:
    """The processor keeping `model`'s answers to `questions` (one per batch row) in their languages, or
    None when its tokenizer is not one of ours (`has_slots`) or its config turns the rule off."""
    if not has_slots(tokenizer) or getattr(getattr(model, "config", None), KEEP_ATTRIBUTE, True) is False:
        return None
    return AnswerLanguage(tokenizer, [language_of(question) for question in questions])
