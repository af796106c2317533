"""VisualGLM on current transformers, at a tiny size on CPU: the published directory layout, KV cache, batching, LoRA.

The tiny model uses the tiny ChatGLM-layout SentencePiece model (tests/fixtures/visualglm) and random
weights; the published `THUDM/visualglm-6b` layout (config.json with model_type "chatglm" and remote-code
`auto_map`, sharded `pytorch_model-0000N-of-0000M.bin` + index, ice_text.model) is written by hand here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from finetune.visualglm import VisualGLMForConditionalGeneration, lora_config, lora_target_modules, tiny_config
from finetune.visualglm.processing import VisualGLMProcessor

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "visualglm"
TOKEN_IDS = {"vocab_size": 240, "bos_token_id": 8, "eos_token_id": 9, "mask_token_id": 4, "gmask_token_id": 5,
             "pad_token_id": 3}


def _random_model(seed: int = 0) -> VisualGLMForConditionalGeneration:
    torch.manual_seed(seed)
    model = VisualGLMForConditionalGeneration(tiny_config(**TOKEN_IDS)).eval()
    with torch.no_grad():  # larger weights than the init so that greedy decoding is not one repeated token
        for name, param in model.named_parameters():
            if "layernorm" not in name and "ln_vision" not in name:
                param.normal_(0.0, 0.3)
    return model


def write_published_layout(model: VisualGLMForConditionalGeneration, directory: Path, shards: int = 3) -> Path:
    """The THUDM/visualglm-6b directory as downloaded, at tiny size."""
    directory.mkdir(parents=True)
    config = model.config.to_dict()
    published = {k: config[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                                       "inner_hidden_size", "layernorm_epsilon", "max_sequence_length",
                                       "position_encoding_2d", "bos_token_id", "eos_token_id", "mask_token_id",
                                       "gmask_token_id", "pad_token_id", "image_length", "eva_config",
                                       "qformer_config", "use_cache")}
    published.update({
        "model_type": "chatglm", "architectures": ["ChatGLMForConditionalGeneration"], "torch_dtype": "float32",
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage"},
    })
    (directory / "config.json").write_text(json.dumps(published, indent=2))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        part = names[index::shards]
        filename = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, directory / filename)
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    shutil.copy(FIXTURES / "tiny_ice_text.model", directory / "ice_text.model")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLMTokenizer", "bos_token": "<sop>", "eos_token": "<eop>", "gmask_token": "[gMASK]",
        "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>", "num_image_tokens": 0,
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
    }))
    return directory


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VisualGLMForConditionalGeneration]:
    model = _random_model()
    return write_published_layout(model, tmp_path_factory.mktemp("vg-published") / "visualglm-6b"), model


def _prompt_inputs(processor: VisualGLMProcessor, questions: list[str], sizes: list[int]) -> dict:
    from PIL import Image

    texts, images = [], []
    for question, size in zip(questions, sizes):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        images.append(Image.new("RGB", (size, size), (40 * size % 255, 90, 200)))
    return processor(text=texts, images=images, padding=True, padding_side="left")


def _greedy_without_cache(model, input_ids, pixel_values, steps: int) -> list[int]:
    sequence = input_ids
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=sequence, pixel_values=pixel_values, use_cache=False).logits
        token = logits[0, -1].argmax().view(1, 1)
        sequence = torch.cat([sequence, token], dim=1)
        if int(token) == model.config.eos_token_id:
            break
    return sequence[0, input_ids.shape[1]:].tolist()


def test_published_sharded_bin_directory_loads_with_auto_classes(published):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory, original = published
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    assert type(model).__name__ == "PublishedVisualGLMForConditionalGeneration"
    assert isinstance(processor, VisualGLMProcessor) and processor.image_processor.image_size == 28
    ours, theirs = model.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_text_only_chatglm_config_is_refused(tmp_path):
    from transformers import AutoConfig

    import finetune.visualglm  # noqa: F401
    from finetune.visualglm import VisualGLMConfigError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "hidden_size": 64,
                                                      "num_layers": 2, "num_attention_heads": 4}))
    with pytest.raises(VisualGLMConfigError, match="text-only ChatGLM"):
        AutoConfig.from_pretrained(tmp_path)


def test_kv_cache_generation_equals_full_recompute_and_batching_changes_nothing(published):
    directory, model = published
    processor = VisualGLMProcessor.from_pretrained(directory)
    inputs = _prompt_inputs(processor, ["What defects does this wafer show?", "失效芯片在哪里？"], [28, 60])
    steps = 6
    batch = model.generate(**inputs, max_new_tokens=steps, do_sample=False, eos_token_id=9, pad_token_id=3)
    length = inputs["input_ids"].shape[1]
    for row in range(2):
        keep = inputs["attention_mask"][row].bool()
        ids = inputs["input_ids"][row][keep][None]
        pixels = inputs["pixel_values"][row : row + 1]
        alone = _greedy_without_cache(model, ids, pixels, steps)
        got = batch[row, length:].tolist()
        got = got[: got.index(9) + 1] if 9 in got else got
        assert got == alone
    assert inputs["attention_mask"][0].tolist() != inputs["attention_mask"][1].tolist()  # really padded


def test_image_changes_the_answer_logits(published):
    _, model = published
    ids = torch.tensor([[20, 21, *[3] * 4, 30, 31, 5, 8]])
    a, b = torch.zeros(1, 3, 28, 28), torch.ones(1, 3, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids, pixel_values=a).logits, model(input_ids=ids, pixel_values=b).logits)


def test_lora_targets_are_anchored_to_the_language_model():
    import re

    model = _random_model()
    names = [n for n, _ in model.named_modules()]
    default = [n for n in names if re.fullmatch(lora_target_modules(), n)]
    assert default == ["transformer.layers.0.attention.query_key_value", "transformer.layers.1.attention.query_key_value"]
    release = [n for n in names if re.fullmatch(lora_target_modules(lm_layers=[1], lm_modules=("query_key_value", "dense"),
                                                                     vit_layers=[0], vit_modules=("query_key_value", "dense"),
                                                                     projection=True), n)]
    assert release == ["transformer.layers.1.attention.query_key_value", "transformer.layers.1.attention.dense",
                       "image_encoder.vit.transformer.layers.0.attention.query_key_value",
                       "image_encoder.vit.transformer.layers.0.attention.dense", "image_encoder.glm_proj"]


def test_lora_adapter_trains_saves_loads_and_merges(published, tmp_path):
    from peft import get_peft_model

    from finetune.loading import load_model
    from finetune.lora import merge_adapter

    directory, _ = published
    model, processor = load_model(directory, trainable=True)
    peft_model = get_peft_model(model, lora_config(rank=4, vit_layers=[1]))
    trainable = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    assert any("image_encoder.vit" in n for n in trainable) and any(".transformer.layers.0.attention" in n for n in trainable)

    inputs = _prompt_inputs(processor, ["What defects does this wafer show?"], [28])
    labels = torch.cat([inputs["input_ids"], torch.tensor([[40, 41, 9]])], 1)
    train_inputs = {"input_ids": labels, "pixel_values": inputs["pixel_values"]}
    labels = processor.answer_labels(labels)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model.train()
    losses = []
    for _ in range(3):
        loss = peft_model(**train_inputs, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    peft_model.eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    with torch.no_grad():
        expected = peft_model(**train_inputs, use_cache=False).logits
        loaded, _ = load_model(directory, adapter_dir=adapter)  # base + adapter, as the server loads them
        assert torch.allclose(loaded(**train_inputs, use_cache=False).logits, expected, atol=1e-4)
        merged_dir = merge_adapter(directory, adapter, tmp_path / "merged")
        merged, _ = load_model(merged_dir)
        assert torch.allclose(merged(**train_inputs, use_cache=False).logits, expected, atol=1e-4)
        base, _ = load_model(directory)
        assert not torch.allclose(base(**train_inputs, use_cache=False).logits, expected, atol=1e-3)


def test_quantization_is_refused_clearly_without_cuda(published):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal path does not apply")
    from finetune.loading import ModelLoadError
    from model_server.backends.visualglm import VisualGLMBackend

    with pytest.raises(ModelLoadError, match="CUDA"):
        VisualGLMBackend(published[0], quantization="4bit")
