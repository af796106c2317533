"""Whether a tokenizer holds a set of added tokens: how code tells a checkpoint trained with the number
or location slot tokens from one trained without them."""

from __future__ import annotations

from collections.abc import Iterable


def holds_added_tokens(tokenizer: object, tokens: Iterable[str]) -> bool:
    """True when every one of `tokens` is an added token of `tokenizer` (False for a tokenizer that has
    no added vocabulary at all)."""
    added = getattr(tokenizer, "get_added_vocab", None)
    if added is None:
        return False
    known = added()
    return all(token in known for token in tokens)
