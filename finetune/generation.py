"""Greedy answer generation for batches of requests, and a streaming variant for one request.

Used by the evaluator and by the server's hf backend, so what is evaluated is exactly what a
user gets. Prompts come from `finetune.prompting.build_messages`; batches are left-padded; the
oldest history turns are dropped when a conversation would not fit the model's context. For a
checkpoint trained with number slots (`finetune.number_slots`), the measured numbers in history
answers are shown as slots, as in training, and the slots of a new answer are filled with the
numbers measured from the request's map. A model that answers from several views of the map
(`finetune.views`) answers by vote, an unsure answer's other views asked beside the next batch:
`generate_answers` does so itself; `answer_round` hands it back unfinished, for the server's batcher.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList

from data_tools.wafer_map import WaferMap
from finetune.answer_language import answer_language
from finetune.answer_parser import parse_answer
from finetune.background_match import shown_wafer
from finetune.location_slots import has_location_slots, named_patterns
from finetune.number_slots import fill_from_map, fill_stream, has_slots, slot_answer
from finetune.prompting import PromptTooLong, build_messages, fit_history, images_of, uses_measured_facts
from finetune.views import SurenessRecorder, answer_views, consensus, view_count, view_wafers, views_below
from model_server.backends.base import GenerationRequest, Turn, Unfinished


class GenerationError(RuntimeError):
    """Generation failed for a reason the caller can report (prompt too long, bad request)."""


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def context_limit(model: Any) -> int:
    """Maximum sequence length of the model's language decoder."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _encode(processor: Any, texts: list[str], images: list) -> dict:
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    return processor(**kwargs)


def prepare_prompt(
    model: Any, processor: Any, request: GenerationRequest, views: int = 1, others_only: bool = False
) -> tuple[str, dict]:
    """Prompt text (of the first view) and the encoding of one request, a row per view of its map
    (`finetune.views`, the map as sent first unless `others_only`; left-padded), oldest turns dropped
    (in pairs) until every view's prompt and the answer fit the model's context."""

    facts = uses_measured_facts(model)
    shown = shown_wafer(model, request.wafer)
    pad_token_id = _tokenizer(processor).pad_token_id

    def encode(history: tuple[Turn, ...]) -> tuple[int, tuple[str, dict]]:
        prompts = _prompt_texts(processor, request, shown, history, facts, views, others_only)
        encodings = [_encode(processor, [text], images) for text, images in prompts]
        length = max(int(e["input_ids"].shape[1]) for e in encodings)
        encoded = encodings[0] if len(encodings) == 1 else left_pad_batch(encodings, pad_token_id)
        return length, (prompts[0][0], encoded)

    try:
        return fit_history(_prompt_history(processor, request), request.max_new_tokens, context_limit(model), encode)
    except PromptTooLong as exc:
        raise GenerationError(str(exc)) from None


def _prompt_texts(
    processor: Any, request: GenerationRequest, shown: WaferMap | None, history: tuple[Turn, ...], facts: bool,
    views: int, others_only: bool = False,
) -> list[tuple[str, list]]:
    """For each view of `shown`, the map the model is shown for the request's (`shown_wafer`; but the map as
    sent with `others_only`), the chat-template text of `request` with `history` and the images its
    placeholders stand for (one entry when there is no map)."""
    prompts = []
    for wafer in view_wafers(shown, views, others_only):
        messages = build_messages(wafer, history, request.question, facts=facts)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append((text, images_of(messages)))
    return prompts


def _prompt_history(processor: Any, request: GenerationRequest) -> tuple[Turn, ...]:
    """The request's history as the prompt shows it: answers in slot form for a checkpoint trained with slots."""
    tokenizer = _tokenizer(processor)
    if request.wafer is None or not request.history or not has_slots(tokenizer):
        return request.history
    locations = has_location_slots(tokenizer)
    turns, said = [], ""
    for turn in request.history:
        if turn.role == "assistant":
            said += f"{turn.text}\n"  # places were filled among the patterns named so far (`fill_from_map`)
            patterns = named_patterns(said) if locations else ()
            turn = Turn(turn.role, slot_answer(turn.text, request.wafer, patterns, locations))
        turns.append(turn)
    return tuple(turns)


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def left_pad_batch(encodings: Sequence[dict], pad_token_id: int) -> dict:
    """One batch from processor outputs: per-token tensors (shaped like `input_ids`) are left-padded
    (`input_ids` with the pad token, the rest with 0, so the attention mask hides the padding) and
    stacked, rows in order; every other tensor (pixel values, image sizes) is concatenated along the
    batch, in request order (the order the model matches images to their placeholder tokens)."""
    length = max(int(e["input_ids"].shape[1]) for e in encodings)
    batch: dict[str, Any] = {}
    for key in dict.fromkeys(k for e in encodings for k in e):  # a request without an image has no pixel values
        values = [e[key] for e in encodings if key in e]
        if not all(torch.is_tensor(v) for v in values):
            raise GenerationError(f"cannot batch the processor output {key!r}: not a tensor")
        if len(values) == len(encodings) and all(
            v.dim() == 2 and v.shape == e["input_ids"].shape for v, e in zip(values, encodings)
        ):
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.cat([
                torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values
            ])
        else:
            batch[key] = torch.cat(values)
    return batch


def _encode_together(
    model: Any, processor: Any, requests: Sequence[GenerationRequest], views: int = 1, others_only: bool = False
) -> dict | None:
    """The batch's prompts (a row per view of each map, as `_prompt_texts`), whole history included, encoded in one
    processor call (left-padded), or None when one of them must drop turns to fit the context (or
    the tokenizer pads on the right)."""
    if _tokenizer(processor).padding_side != "left":
        return None
    facts = uses_measured_facts(model)
    texts, images, budgets = [], [], []
    for request in requests:
        history = _prompt_history(processor, request)
        shown = shown_wafer(model, request.wafer)
        for text, request_images in _prompt_texts(processor, request, shown, history, facts, views, others_only):
            texts.append(text)
            images.extend(request_images)
            budgets.append(request.max_new_tokens)
    encoded = _encode(processor, texts, images)
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    limit = context_limit(model)
    if any(length + budget > limit for length, budget in zip(lengths, budgets)):
        return None
    return dict(encoded)


def _inputs(
    model: Any, processor: Any, requests: Sequence[GenerationRequest], views: int = 1, others_only: bool = False
) -> dict:
    """Model inputs for a batch, a row per view of each request's map (as `_prompt_texts`): the prompts encoded together
    when they all fit the context; otherwise each request encoded once while fitting it (oldest
    turns dropped), then left-padded. Both give the same tensors; one processor call for the batch
    is cheaper than one per request."""
    rows = sum(view_count(request.wafer, views, others_only) for request in requests)
    inputs = _encode_together(model, processor, requests, views, others_only) if rows > 1 else None
    if inputs is None:
        encodings = [prepare_prompt(model, processor, request, views, others_only)[1] for request in requests]
        inputs = encodings[0] if len(encodings) == 1 else left_pad_batch(encodings, _tokenizer(processor).pad_token_id)
    device = _device_of(model)
    dtype = next(model.parameters()).dtype
    return {
        k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device)) if torch.is_tensor(v) else v
        for k, v in inputs.items()
    }


def generation_kwargs(processor: Any, max_new_tokens: int) -> dict:
    tokenizer = _tokenizer(processor)
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def generate_answers(
    model: Any, processor: Any, requests: list[GenerationRequest], batch_size: int | None = None,
    fill_slots: bool = True,
) -> list[str]:
    """Greedy answers to `requests`, in order; `batch_size` splits a long list into batches. An answer
    asked again about its map's other views (`finetune.views`) is asked beside the next batch, and
    after the last in a batch of its own, as the server does.

    `fill_slots=False` leaves number and location slots as generated (the evaluator counts them).
    """
    answers: list[str] = [""] * len(requests)
    size = batch_size or len(requests) or 1
    carried: list[tuple[int, UnsureAnswer]] = []
    for start in [*range(0, len(requests), size), len(requests)]:  # the last, empty batch finishes what is carried
        chunk = requests[start : start + size]
        if not chunk and not carried:
            break
        written, others = _views_round(model, processor, chunk, [u for _, u in carried])
        for (i, unsure), texts in zip(carried, others):
            answers[i] = _chosen(unsure.request, [unsure.first, *texts], fill_slots)
        carried = []
        for i, (request, texts) in enumerate(zip(chunk, written), start):
            if isinstance(texts, UnsureAnswer):
                carried.append((i, texts))
            else:
                answers[i] = _chosen(request, texts, fill_slots)
    return answers


@dataclass(frozen=True)
class UnsureAnswer(Unfinished):
    """A request whose answer about the map as sent (`first`, as generated) was unsure: the other views
    of its map are still to be asked (`answer_round`)."""

    request: GenerationRequest
    first: str
    rows: int = 1  # the other views asked when it is finished


def answer_round(
    model: Any, processor: Any, requests: Sequence[GenerationRequest], unsure: Sequence[UnsureAnswer] = ()
) -> tuple[list[str | UnsureAnswer], list[str]]:
    """One generate call for a server's batch: the answers to `requests`, except an `UnsureAnswer` for
    each that must also be asked about its map's other views (`finetune.views`), and the answers to
    `unsure` (left so by an earlier round), asked about those views in the same call. The server's
    batcher passes the unsure ones on to its next batch, so asking again costs no generate call of its own."""
    written, others = _views_round(model, processor, requests, unsure)
    answers = [w if isinstance(w, UnsureAnswer) else _chosen(r, w, True) for r, w in zip(requests, written)]
    finished = [_chosen(u.request, [u.first, *texts], True) for u, texts in zip(unsure, others)]
    return answers, finished


def _chosen(request: GenerationRequest, texts: list[str], fill_slots: bool) -> str:
    """The answer among `texts` (one per view) most views agree on; slots filled unless `fill_slots` is False."""
    filled = texts  # the vote reads answers as the user would: slots filled from the map as sent
    if fill_slots or len(texts) > 1:
        filled = [fill_from_map(text, request.wafer, request.earlier_answers) for text in texts]
    chosen = consensus(filled) if len(filled) > 1 else 0
    return filled[chosen] if fill_slots else texts[chosen]


def _views_round(
    model: Any, processor: Any, requests: Sequence[GenerationRequest], unsure: Sequence[UnsureAnswer]
) -> tuple[list[list[str] | UnsureAnswer], list[list[str]]]:
    """One generate call: each request's answers (one per view the model answers from; with
    `answer_views_below` set, the answer about the map as sent alone, or an `UnsureAnswer` when it is less
    sure than that and names a pattern set, or none: a normal map), and the answers about the other
    views of each `unsure` one's map. An answer naming no pattern set (a yield, a count) has nothing to vote on."""
    views, below = answer_views(model), views_below(model)
    ask_when_unsure = views > 1 and below is not None
    groups = [(requests, 1 if ask_when_unsure else views, False), ([u.request for u in unsure], views, True)]
    (written, others), sureness = _generate_groups(model, processor, groups, sureness=ask_when_unsure and bool(requests))
    if not ask_when_unsure:
        return list(written), others
    return [
        UnsureAnswer(request, texts[0], rows=view_count(request.wafer, views, others_only=True))
        if request.wafer is not None and sure < below
        and parse_answer(fill_from_map(texts[0], request.wafer, request.earlier_answers)) is not None
        else texts
        for request, texts, sure in zip(requests, written, sureness)  # the requests' rows come first, one each
    ], others


def _generate_groups(
    model: Any, processor: Any, groups: Sequence[tuple[Sequence[GenerationRequest], int, bool]], sureness: bool = False
) -> tuple[list[list[list[str]]], list[float]]:
    """One batch of greedy generation for groups of (requests, views, others_only): for each group, for
    each request the answers about each view of its map (but the map as sent with `others_only`); with
    `sureness` how sure each batch row's answer was, rows in order (`SurenessRecorder.least_sure`; else [])."""
    asked = [(requests, views, others_only) for requests, views, others_only in groups if requests]
    if not asked:
        return [[] for _ in groups], []
    tokenizer = _tokenizer(processor)
    encodings = [_inputs(model, processor, *group) for group in asked]
    inputs = encodings[0] if len(encodings) == 1 else left_pad_batch(encodings, tokenizer.pad_token_id)
    kwargs = generation_kwargs(processor, max(r.max_new_tokens for requests, _, _ in asked for r in requests))
    recorder = SurenessRecorder() if sureness else None
    questions = [request.question for requests, views, others_only in asked for request in requests
                 for _ in range(view_count(request.wafer, views, others_only))]
    language = answer_language(model, tokenizer, questions)
    # the recorder first: how sure an answer is, is read before the other language's tokens are taken out
    processors = [p for p in (recorder, language) if p is not None]
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    with torch.inference_mode():
        output = model.generate(**inputs, **kwargs)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    rows = iter(new_tokens)
    written = [
        [[tokenizer.decode(next(rows)[: request.max_new_tokens], skip_special_tokens=True).strip()
          for _ in range(view_count(request.wafer, views, others_only))]
         for request in requests]
        for requests, views, others_only in groups
    ]
    return written, [] if recorder is None else recorder.least_sure(new_tokens, tokenizer.pad_token_id)


def stream_answer(model: Any, processor: Any, request: GenerationRequest) -> Iterator[str]:
    """Yield the greedy answer to one request piece by piece as it is generated (for SSE).

    An answer chosen among several views of the map (`finetune.views`) is known only once all are
    written: it comes as one piece."""
    if view_count(request.wafer, answer_views(model)) > 1:
        if answer := generate_answers(model, processor, [request])[0]:
            yield answer
        return
    inputs = _inputs(model, processor, [request])
    kwargs = generation_kwargs(processor, request.max_new_tokens)
    if (language := answer_language(model, _tokenizer(processor), [request.question])) is not None:
        kwargs["logits_processor"] = LogitsProcessorList([language])
    pieces = stream_generate(model, _tokenizer(processor), inputs, kwargs)
    if request.wafer is not None and has_slots(_tokenizer(processor)):
        pieces = fill_stream(pieces, request.wafer, request.earlier_answers)
    yield from pieces


def stream_generate(model: Any, tokenizer: Any, inputs: dict, kwargs: dict) -> Iterator[str]:
    """Run `model.generate(**inputs, **kwargs)` on a worker thread and yield the decoded text as it arrives.

    A failure inside `generate` is raised here as `GenerationError`, with the original as its cause.
    """
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(**inputs, **kwargs, streamer=streamer)
        except BaseException as exc:  # reported to the consumer below
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, name="defect-glm-stream", daemon=True)
    worker.start()
    first = True
    for piece in streamer:
        if first:
            piece = piece.lstrip()
            first = False
        if piece:
            yield piece
    worker.join()
    if failure:
        raise GenerationError(f"generation failed: {failure[0]}") from failure[0]
