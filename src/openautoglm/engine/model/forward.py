"""The paged forward pass of a Llama-family decoder, using the Hugging Face model's own modules.

The weights, norms, MLPs and rotary embedding are the loaded transformers model's (so precision and
quantisation applied to it carry over); only attention is ours: keys and values live in a
:class:`KVCache` addressed by slot, and every row attends over its own slots.

Invariants: the pass writes the new tokens' keys/values into their slots before attending, so a
row sees its cached prefix and its own new tokens (causally) and nothing of any other row; logits
are computed only for the tokens that sample (``sample_index``), which is where most of a prefill's
``lm_head`` cost would otherwise go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from openautoglm.engine.model.inputs import AttentionGroup, StepInputs

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(slots=True)
class KVCache:
    """Keys and values of every layer: ``[num_layers, num_slots, num_kv_heads, head_dim]`` each."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: Any,
        device: torch.device,
    ) -> KVCache:
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )

    @property
    def num_bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The few numbers of a decoder the paged pass needs (per rank under tensor parallelism)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        return cls(
            config.num_hidden_layers,
            config.num_attention_heads,
            config.num_key_value_heads,
            head_dim,
        )


def model_dtype(model: Any) -> torch.dtype:
    """The dtype the model computes in (its first floating-point parameter's)."""
    dtype: torch.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    return dtype


def check_supported(config: Any) -> None:
    """Refuse architectures whose attention the paged pass does not reproduce."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"the batching engine runs {sorted(SUPPORTED_MODEL_TYPES)} models, not '{model_type}'"
        )
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        window = config.sliding_window
        if window < getattr(config, "max_position_embeddings", window):
            raise ValueError(f"sliding-window attention ({window}) is not supported")


class PagedDecoder:
    """Runs ``StepInputs`` through a transformers causal LM with a paged KV cache.

    ``layers`` selects a pipeline stage (all layers by default): the first stage embeds the
    tokens, the last one applies the final norm and ``lm_head``; the cache holds the stage's
    layers only.
    """

    def __init__(
        self, model: Any, shape: ModelShape, cache: KVCache, layers: range | None = None
    ) -> None:
        self.model = model
        self.shape = shape
        self.cache = cache
        self.layers = layers if layers is not None else range(shape.num_layers)
        self.scale = shape.head_dim**-0.5
        # Hooks for tensor parallelism: the sum of partial attention/MLP outputs over ranks.
        self.reduce: Any = None

    @property
    def is_first_stage(self) -> bool:
        return self.layers.start == 0

    @property
    def is_last_stage(self) -> bool:
        return self.layers.stop == self.shape.num_layers

    def logits(self, inputs: StepInputs) -> torch.Tensor:
        """Logits ``[S, vocab]`` for the sampling tokens of the step (whole model)."""
        return self.forward(inputs, None)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs, hidden: torch.Tensor | None) -> torch.Tensor:
        """This stage's part of the pass: hidden states in (none for the first stage), hidden
        states out, or logits ``[S, vocab]`` from the last stage."""
        decoder = self.model.model
        if hidden is None:
            hidden = decoder.embed_tokens(inputs.input_ids)
        cos, sin = decoder.rotary_emb(hidden, inputs.positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)
        for index in self.layers:
            layer = decoder.layers[index]
            residual = hidden
            attended = self._attention(
                layer.self_attn,
                layer.input_layernorm(hidden),
                cos,
                sin,
                index - self.layers.start,
                inputs,
            )
            hidden = residual + self._reduced(attended)
            residual = hidden
            hidden = residual + self._reduced(layer.mlp(layer.post_attention_layernorm(hidden)))
        if not self.is_last_stage:
            return hidden
        chosen = decoder.norm(hidden[inputs.sample_index])
        logits: torch.Tensor = self.model.lm_head(chosen)
        return logits.float()

    def _reduced(self, partial: torch.Tensor) -> torch.Tensor:
        return partial if self.reduce is None else self.reduce(partial)

    def _attention(
        self,
        attn: Any,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        inputs: StepInputs,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        d = self.shape.head_dim
        q = attn.q_proj(x).view(num_tokens, -1, d)
        k = attn.k_proj(x).view(num_tokens, -1, d)
        v = attn.v_proj(x).view(num_tokens, -1, d)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)
        key_cache, value_cache = self.cache.keys[layer], self.cache.values[layer]
        key_cache[inputs.slot_mapping] = k.to(key_cache.dtype)
        value_cache[inputs.slot_mapping] = v.to(value_cache.dtype)
        out = torch.empty_like(q)
        for group in inputs.groups:
            self._attend_group(group, q, k, v, key_cache, value_cache, out)
        result: torch.Tensor = attn.o_proj(out.view(num_tokens, -1))
        return result

    def _attend_group(
        self,
        group: AttentionGroup,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        gqa = q.shape[1] != k.shape[1]
        if group.causal_self:
            index = group.query_index[0]
            qg, kg, vg = (t[index].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(
                qg, kg, vg, is_causal=True, scale=self.scale, enable_gqa=gqa
            )
            out[index] = o[0].transpose(0, 1)
            return
        qg = q[group.query_index].transpose(1, 2)  # [B, H, max_q, D]
        kg = key_cache[group.kv_slots].transpose(1, 2).to(q.dtype)
        vg = value_cache[group.kv_slots].transpose(1, 2).to(q.dtype)
        o = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=group.mask, scale=self.scale, enable_gqa=gqa
        )
        valid = group.query_valid
        out[group.query_index[valid]] = o.transpose(1, 2)[valid]
