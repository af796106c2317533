"""The ChatGLM-6B tokenizer (as used by VisualGLM-6B), read from its SentencePiece `ice_text.model`.

Behaviour of the original, reimplemented: line breaks become the `<n>` piece, tabs `<|tab|>`,
runs of 2..80 spaces `<|blank_N|>`; ids are SentencePiece ids shifted by `num_image_tokens`
(0 for the published 130,528-token vocabulary); a prompt ends with `[gMASK]` `<sop>` and an
answer with `<eop>`; decoding drops padding and undoes the whitespace pieces.
"""

from __future__ import annotations

import os
from shutil import copyfile
from typing import Any

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

VOCAB_FILE = "ice_text.model"
MAX_BLANK = 80


def _encode_whitespace(text: str, max_blank: int = MAX_BLANK) -> str:
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(max_blank, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return text


def _decode_whitespace(text: str, max_blank: int = MAX_BLANK) -> str:
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for n in range(2, max_blank + 1):
        text = text.replace(f"<|blank_{n}|>", " " * n)
    return text


class ChatGLMTokenizer(SentencePieceBackend):
    """SentencePiece tokenizer with ChatGLM-6B's whitespace pieces and special tokens."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}  # noqa: RUF012 (transformers' class attribute)
    model_input_names = ["input_ids", "attention_mask"]  # noqa: RUF012
    padding_side = "left"

    def __init__(
        self,
        vocab_file: str,
        num_image_tokens: int = 0,
        bos_token: str = "<sop>",
        eos_token: str = "<eop>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        mask_token: str = "[MASK]",
        gmask_token: str = "[gMASK]",
        **kwargs: Any,
    ) -> None:
        if not vocab_file or not os.path.isfile(vocab_file):
            raise FileNotFoundError(
                f"ChatGLM tokenizer: expected the SentencePiece model {VOCAB_FILE} at {vocab_file!r}; "
                "copy it from the THUDM/visualglm-6b checkpoint directory"
            )
        if int(num_image_tokens) != 0:
            raise ValueError(
                f"num_image_tokens={num_image_tokens}: only the published 130,528-token ChatGLM vocabulary "
                "(num_image_tokens 0, as VisualGLM-6B uses) is supported"
            )
        self.num_image_tokens = 0
        self.gmask_token = str(gmask_token)
        kwargs.pop("special_tokens_pattern", None)
        super().__init__(
            vocab_file=vocab_file,
            num_image_tokens=self.num_image_tokens,
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            mask_token=mask_token,
            gmask_token=gmask_token,
            special_tokens_pattern="none",
            **kwargs,
        )
        names = [str(t) for t in (bos_token, eos_token, gmask_token, mask_token)]
        missing = [t for t in names if self.sp_model.piece_to_id(t) == self.sp_model.unk_id()]
        if missing:
            raise ValueError(f"{vocab_file} is not a ChatGLM SentencePiece model: it lacks the pieces {missing}")
        if self.gmask_token not in self.tokens_trie._tokens:
            self.tokens_trie.add(self.gmask_token)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size() + self.num_image_tokens

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._convert_id_to_token(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    @property
    def gmask_token_id(self) -> int:
        return self._convert_token_to_id(self.gmask_token)

    def _convert_token_to_id(self, token: str) -> int:
        if token.startswith("<image_") and token.endswith(">") and token[7:-1].isdigit():
            return int(token[7:-1])
        return self.sp_model.piece_to_id(token) + self.num_image_tokens

    def _convert_id_to_token(self, index: int) -> str:
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        return self.sp_model.id_to_piece(index - self.num_image_tokens)

    # ------------------------------------------------------------------ text <-> ids
    def encode_text(self, text: str) -> list[int]:
        """Ids of `text` exactly as the original `tokenizer.encode(text, add_special_tokens=False)`."""
        if not text:
            return []
        return [i + self.num_image_tokens for i in self.sp_model.encode(_encode_whitespace(text))]

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode(_encode_whitespace(text), out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return _decode_whitespace(self.sp_model.decode_pieces([t for t in tokens if not t.startswith("<image_")]))

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs: Any) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        drop = {self.pad_token_id}
        if skip_special_tokens:
            drop |= {self.bos_token_id, self.eos_token_id, self.gmask_token_id, self.mask_token_id}
        pieces = [i - self.num_image_tokens for i in ids if i not in drop and i >= self.num_image_tokens]
        return _decode_whitespace(self.sp_model.decode(pieces))

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """prompt + [gMASK] <sop> (+ answer + <eop>), as ChatGLM-6B was trained."""
        ids = [*token_ids_0, self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids += [*token_ids_1, self.eos_token_id]
        return ids

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        if not os.path.isdir(save_directory):
            raise NotADirectoryError(f"cannot save the tokenizer: {save_directory} is not a directory")
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            copyfile(self.vocab_file, out)
        return (out,)
