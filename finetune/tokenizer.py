"""The small model's tokenizer: byte-level BPE trained offline on corpus text (English and Chinese).

Digits are split one per token, and the number slot tokens of `finetune.number_slots` are
added as ordinary tokens (decoded as written), so the model can name a measured number instead of
copying its digits. The special tokens and the chat template that every small checkpoint shares are defined
here, so a checkpoint's tokenizer and processor load with transformers' Auto classes alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from finetune.location_slots import LOCATION_TOKENS
from finetune.number_slots import SLOT_TOKENS

PAD = "<pad>"
EOS = "<|end|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
IMAGE = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, USER, ASSISTANT, SYSTEM, IMAGE)

#: Jinja chat template: `<|role|>content<|end|>` per message; images become one `<image>`
#: placeholder that the processor expands to the image tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers.

    Every byte is in the base alphabet, so any text (any language) encodes without unknown tokens.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=2048,
    )
    wrapped.add_special_tokens({"additional_special_tokens": [USER, ASSISTANT, SYSTEM, IMAGE]})
    wrapped.add_tokens(list(SLOT_TOKENS + LOCATION_TOKENS))  # not special: decoding keeps them for filling
    return wrapped
