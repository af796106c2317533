"""VisualGLM-6B on current torch/transformers: ChatGLM-6B + EVA ViT + BLIP-2 Q-Former, with a KV cache.

Parameter names and shapes are those of the published `THUDM/visualglm-6b` checkpoint:
- the language model in the Hugging Face ChatGLM-6B layout (`transformer.*`, `lm_head.weight`;
  each layer's fused `query_key_value` rows grouped per head as (q, k, v));
- the image encoder in SwissArmyTransformer's layout (`image_encoder.vit.*`,
  `image_encoder.qformer.*`, `image_encoder.glm_proj.*`; fused rows as all-Q, all-K, all-V).

The computation follows the original: GLM's 2-D rotary positions (position, block position),
bidirectional attention over the prompt and causal attention after `<sop>`, post-LN residuals
scaled by sqrt(2 * layers), tanh-GELU; a pre-LN ViT with a final `ln_vision` LayerNorm; a post-LN
Q-Former with cross-attention in every other layer; a linear projection into the LM's
embedding space. The image's query outputs replace the `image_length` slot tokens in the prompt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import VisualGLMConfig


class VisualGLMInputError(ValueError):
    """Inputs the model cannot interpret (missing special tokens, wrong number of image slots...)."""


# ---------------------------------------------------------------------------------------- positions
def glm_position_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: VisualGLMConfig
) -> torch.Tensor:
    """GLM's (position, block position) ids, shape (batch, 2, length), for full sequences.

    The prompt ends with `[gMASK]` (or `[MASK]`) then `<sop>`: prompt tokens get 0, 1, 2, ... (padding
    excluded) and block position 0; `<sop>` and everything after it get the mask token's position and
    block positions 1, 2, 3, ...
    """
    batch, length = input_ids.shape
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    context = context_lengths(input_ids, config)
    is_gmask = input_ids == config.gmask_token_id
    mask_tokens = torch.where(is_gmask.any(-1, keepdim=True), is_gmask, input_ids == config.mask_token_id)
    if not bool(mask_tokens.any(-1).all()):
        raise VisualGLMInputError(
            f"every sequence needs a [gMASK] (id {config.gmask_token_id}) or [MASK] (id {config.mask_token_id}) "
            "token before <sop>; build prompts with the VisualGLM processor"
        )
    mask_index = mask_tokens.long().argmax(-1)
    mask_position = positions.gather(1, mask_index[:, None])
    index = torch.arange(length, device=input_ids.device)[None, :]
    after = index >= context[:, None]
    position = torch.where(after, mask_position.expand(batch, length), positions)
    block = torch.where(after, index - context[:, None] + 1, torch.zeros_like(index))
    return torch.stack([position, block], dim=1)


def context_lengths(input_ids: torch.Tensor, config: VisualGLMConfig) -> torch.Tensor:
    """Index of the first `<sop>` (bos) token of each row: the bidirectional prompt ends there."""
    is_bos = input_ids == config.bos_token_id
    if not bool(is_bos.any(-1).all()):
        raise VisualGLMInputError(
            f"every sequence needs the <sop> token (id {config.bos_token_id}) after its prompt; "
            "build prompts with the VisualGLM processor"
        )
    return is_bos.long().argmax(-1)


def glm_attention_bias(
    attention_mask: torch.Tensor,
    query_length: int,
    past_length: int,
    context: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive attention bias (batch, 1, query, key): prompt bidirectional, causal after `<sop>`, no padding."""
    device = attention_mask.device
    key_length = attention_mask.shape[1]
    query_pos = torch.arange(query_length, device=device) + past_length
    key_pos = torch.arange(key_length, device=device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None]  # (1, q, k)
    if context is not None:
        allowed = allowed | (key_pos[None, None, :] < context[:, None, None])
    allowed = allowed & attention_mask.bool()[:, None, :]
    allowed = allowed | (key_pos[None, :] == query_pos[:, None])[None]  # never an empty row (padding queries)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias[:, None]


# ---------------------------------------------------------------------------------------- language model
class GLMRotaryEmbedding(nn.Module):
    """Rotary embedding over half a head (GLM rotates each half with its own position id)."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        # Stored in the published checkpoint (hence persistent); the angles are recomputed in fp32 below,
        # as the SwissArmyTransformer original does, so a half-precision copy cannot round them.
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=True)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self._inv_freq(positions.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (batch, 1, length, dim)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class GLMAttention(nn.Module):
    def __init__(self, config: VisualGLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary_emb = GLMRotaryEmbedding(self.head_dim // 2)

    def forward(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        mixed = self.query_key_value(hidden).view(batch, length, self.num_heads, 3 * self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in mixed.split(self.head_dim, dim=-1))
        cos0, sin0 = self.rotary_emb(position_ids[:, 0], query.dtype)
        cos1, sin1 = self.rotary_emb(position_ids[:, 1], query.dtype)
        q1, q2 = query.chunk(2, dim=-1)
        k1, k2 = key.chunk(2, dim=-1)
        query = torch.cat([_apply_rotary(q1, cos0, sin0), _apply_rotary(q2, cos1, sin1)], dim=-1)
        key = torch.cat([_apply_rotary(k1, cos0, sin0), _apply_rotary(k2, cos1, sin1)], dim=-1)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype))
        return self.dense(out.transpose(1, 2).reshape(batch, length, -1))


class GLMMLP(nn.Module):
    def __init__(self, config: VisualGLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden), approximate="tanh"))


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, config: VisualGLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)
        self.alpha = math.sqrt(2 * config.num_layers)

    def forward(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        attention_input = self.input_layernorm(hidden)
        hidden = attention_input * self.alpha + self.attention(attention_input, bias, position_ids, cache)
        mlp_input = self.post_attention_layernorm(hidden)
        return mlp_input * self.alpha + self.mlp(mlp_input)


class GLMTransformer(nn.Module):
    """ChatGLM-6B's body: embeddings, layers, final LayerNorm (the LM head sits beside it)."""

    def __init__(self, config: VisualGLMConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


# ---------------------------------------------------------------------------------------- vision
class SatSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        query, key, value = (self._heads(t) for t in self.query_key_value(hidden).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(query, key, value)
        return self.dense(out.transpose(1, 2).flatten(2))


class SatCrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, encoder_hidden: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(encoder_hidden, 2 * hidden)
        self.dense = nn.Linear(hidden, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        query = self._heads(self.query(hidden))
        key, value = (self._heads(t) for t in self.key_value(encoder).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(query, key, value)
        return self.dense(out.transpose(1, 2).flatten(2))


class SatMLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, inner)
        self.dense_4h_to_h = nn.Linear(inner, hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden)))


class SatLayer(GradientCheckpointingLayer):
    """One SwissArmyTransformer layer ("pre" or "post" LayerNorm order, optional cross-attention)."""

    def __init__(self, args: dict, cross: bool) -> None:
        super().__init__()
        hidden, heads, eps = int(args["hidden_size"]), int(args["num_attention_heads"]), float(args["layernorm_epsilon"])
        self.post_ln = args.get("layernorm_order", "pre") == "post"
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.attention = SatSelfAttention(hidden, heads)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.has_cross = cross
        if cross:
            encoder_hidden = int(args.get("cross_attn_hidden_size") or hidden)
            self.cross_attention = SatCrossAttention(hidden, heads, encoder_hidden)
            self.post_cross_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.mlp = SatMLP(hidden, int(args.get("inner_hidden_size") or 4 * hidden))

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor | None = None) -> torch.Tensor:
        attention_input = self.input_layernorm(hidden)
        attention_output = self.attention(attention_input)
        if self.post_ln:
            mlp_input = self.post_attention_layernorm(attention_input + attention_output)
            if self.has_cross and encoder is not None:
                hidden = mlp_input + self.cross_attention(mlp_input, encoder)
                mlp_input = self.post_cross_attention_layernorm(hidden)
            return mlp_input + self.mlp(mlp_input)
        hidden = hidden + attention_output
        if self.has_cross and encoder is not None:
            hidden = hidden + self.cross_attention(self.post_cross_attention_layernorm(hidden), encoder)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class SatTransformer(nn.Module):
    def __init__(self, args: dict, with_positions: bool) -> None:
        super().__init__()
        hidden = int(args["hidden_size"])
        self.word_embeddings = nn.Embedding(int(args["vocab_size"]), hidden)
        if with_positions:
            self.position_embeddings = nn.Embedding(int(args["max_sequence_length"]), hidden)
        decoder = args.get("is_decoder", False)
        layers = int(args["num_layers"])
        flags = decoder if isinstance(decoder, list) else [bool(decoder)] * layers
        self.layers = nn.ModuleList([SatLayer(args, bool(flags[i])) for i in range(layers)])
        if args.get("use_final_layernorm", True):
            self.final_layernorm = nn.LayerNorm(hidden, eps=float(args["layernorm_epsilon"]))

    def run_layers(self, hidden: torch.Tensor, encoder: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, encoder)
        if hasattr(self, "final_layernorm"):
            hidden = self.final_layernorm(hidden)
        return hidden


class _PatchEmbedding(nn.Module):
    def __init__(self, args: dict) -> None:
        super().__init__()
        patch = int(args["patch_size"])
        self.proj = nn.Conv2d(int(args["in_channels"]), int(args["hidden_size"]), kernel_size=patch, stride=patch)


class _FinalNorm(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.ln_vision = nn.LayerNorm(hidden)  # torch's default eps, as in the original


class EvaViT(nn.Module):
    """EVA-CLIP ViT-g: [cls] + patches, learned positions, pre-LN layers, then `ln_vision`."""

    def __init__(self, args: dict) -> None:
        super().__init__()
        self.pre_len = int(args["pre_len"])
        self.post_len = int(args["post_len"])
        self.transformer = SatTransformer(args, with_positions=True)
        self.mixins = nn.ModuleDict({"patch_embedding": _PatchEmbedding(args), "cls": _FinalNorm(int(args["hidden_size"]))})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.shape[0]
        patches = self.mixins["patch_embedding"].proj(image).flatten(2).transpose(1, 2)
        special = self.transformer.word_embeddings(
            torch.zeros(batch, self.pre_len + self.post_len, dtype=torch.long, device=image.device)
        )
        hidden = torch.cat([special[:, : self.pre_len], patches, special[:, self.pre_len :]], dim=1)
        positions = self.transformer.position_embeddings.weight
        if positions.shape[0] != hidden.shape[1]:
            raise VisualGLMInputError(
                f"the image gives {hidden.shape[1]} ViT tokens but the model has {positions.shape[0]} positions; "
                "resize images to the configured image_size"
            )
        hidden = hidden + positions[None].to(hidden.dtype)
        return self.mixins["cls"].ln_vision(self.transformer.run_layers(hidden))


class QFormer(nn.Module):
    """BLIP-2 Q-Former: learned queries, post-LN layers, cross-attention to the ViT in decoder layers."""

    def __init__(self, args: dict) -> None:
        super().__init__()
        self.num_queries = int(args["vocab_size"])
        self.transformer = SatTransformer(args, with_positions=False)

    def forward(self, encoder: torch.Tensor) -> torch.Tensor:
        queries = self.transformer.word_embeddings.weight[None].expand(encoder.shape[0], -1, -1)
        return self.transformer.run_layers(queries, encoder)


class BLIP2(nn.Module):
    def __init__(self, config: VisualGLMConfig) -> None:
        super().__init__()
        self.vit = EvaViT(config.eva_config)
        self.qformer = QFormer(config.qformer_config)
        self.glm_proj = nn.Linear(int(config.qformer_config["hidden_size"]), config.hidden_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.glm_proj(self.qformer(self.vit(image)))


# ---------------------------------------------------------------------------------------- the model
class VisualGLMPreTrainedModel(PreTrainedModel):
    config_class = VisualGLMConfig
    config: VisualGLMConfig
    base_model_prefix = "visualglm"  # no wrapper module: checkpoint keys are used as they are
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock", "SatLayer"]  # noqa: RUF012 (transformers API)
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GLMRotaryEmbedding):
            init.copy_(module.inv_freq, module._inv_freq(module.inv_freq.device))


class VisualGLMForConditionalGeneration(VisualGLMPreTrainedModel, GenerationMixin):
    """VisualGLM-6B: answers about an image placed in the prompt's `image_length` slot tokens."""

    #: GLM's 2-D positions come from the special tokens and the mask; callers must not pass 1-D ones.
    derives_position_ids = True

    def __init__(self, config: VisualGLMConfig) -> None:
        super().__init__(config)
        self.transformer = GLMTransformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.image_encoder = BLIP2(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ------------------------------------------------------------------ pieces
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, image_length, hidden) LM input embeddings."""
        if pixel_values.ndim != 4:
            raise VisualGLMInputError(
                f"pixel_values must be (batch, channels, height, width); got shape {tuple(pixel_values.shape)}"
            )
        vision_dtype = self.image_encoder.glm_proj.weight.dtype
        if not vision_dtype.is_floating_point:  # quantised projection: run the encoder in the compute dtype
            vision_dtype = self.transformer.word_embeddings.weight.dtype
        return self.image_encoder(pixel_values.to(vision_dtype))

    def _insert_images(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Replace each image row's slot tokens by its image's embeddings (rows without slots: text only)."""
        slots = input_ids == self.config.slot_token_id
        if attention_mask is not None:
            slots = slots & attention_mask.bool()
        counts = slots.sum(-1)
        image_rows = int((counts > 0).sum())
        if bool(((counts != 0) & (counts != self.config.image_length)).any()) or image_rows != pixel_values.shape[0]:
            raise VisualGLMInputError(
                f"each sequence with an image needs exactly {self.config.image_length} image slot tokens "
                f"(id {self.config.slot_token_id}) and the batch one image per such sequence; found slot counts "
                f"{counts.tolist()} and {pixel_values.shape[0]} images"
            )
        images = self.encode_images(pixel_values).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(slots[..., None].expand_as(inputs_embeds), images)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if cache is None:  # the name transformers used before 5.x's `cache`
            cache = kwargs.pop("past_key_values", None)
        if input_ids is None:
            raise VisualGLMInputError("VisualGLM needs input_ids (the special tokens define its attention pattern)")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=input_ids.device)
        elif attention_mask.shape[1] != past_length + length:
            raise VisualGLMInputError(
                f"attention_mask covers {attention_mask.shape[1]} tokens but the cache holds {past_length} "
                f"and {length} are new"
            )
        if past_length == 0:
            context = context_lengths(input_ids, self.config)
            if position_ids is None:
                position_ids = glm_position_ids(input_ids, attention_mask, self.config)
        else:
            context = None  # every new token comes after <sop>: plain causal attention over the cache
            if position_ids is None:
                raise VisualGLMInputError("position_ids are required when continuing from a cache")
        if position_ids.ndim != 3 or position_ids.shape[1] != 2:
            raise VisualGLMInputError(
                f"VisualGLM takes 2-D GLM positions of shape (batch, 2, length); got {tuple(position_ids.shape)} "
                "(leave position_ids out and they are derived from the special tokens)"
            )

        if inputs_embeds is None:
            inputs_embeds = self.transformer.word_embeddings(input_ids)
        if pixel_values is not None and past_length == 0:
            inputs_embeds = self._insert_images(input_ids, inputs_embeds, pixel_values, attention_mask[:, -length:])

        bias = glm_attention_bias(attention_mask, length, past_length, context, inputs_embeds.dtype)
        hidden = inputs_embeds
        all_hidden: list[torch.Tensor] = []
        for layer in self.transformer.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden = layer(hidden, bias, position_ids, cache)
        hidden = self.transformer.final_layernorm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)

        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(kept)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, -shift_logits.shape[1] - 1 :][:, 1:].to(logits.device)
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """`GenerationMixin.generate`, except that a missing attention_mask means "no padding".

        The image slots carry the pad token id (as in the original), so the mask must not be guessed
        from pad tokens; pass the processor's attention_mask for padded batches.
        """
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> dict:
        """Only the new tokens go in after the first step; GLM's 2-D positions are derived from the whole sequence."""
        kwargs.pop("position_ids", None)
        kwargs.pop("past_key_values", None)
        cached = cache.get_seq_length() if cache is not None else 0
        if next_sequence_length is None:
            next_sequence_length = input_ids.shape[1] - cached
        new = input_ids[:, -next_sequence_length:]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = glm_position_ids(input_ids, attention_mask, self.config)[..., -next_sequence_length:]
        model_inputs: dict = {
            "input_ids": new.clone(memory_format=torch.contiguous_format),
            "attention_mask": attention_mask,
            "position_ids": positions.clone(memory_format=torch.contiguous_format),
            "pixel_values": pixel_values if cached == 0 else None,
        }
        if cache is not None:
            model_inputs["cache"] = cache
        for key, value in kwargs.items():
            if key not in model_inputs and key not in ("labels", "next_sequence_length", "cache_position"):
                model_inputs[key] = value
        return model_inputs
