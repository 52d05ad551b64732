"""Per-request sampling for a batch of logits: each row has its own parameters and generator.

Invariants: a greedy row (temperature 0) takes the arg-max of its (penalised) logits, exactly as
``model.generate(do_sample=False)`` does; a sampled row draws only from its own
``torch.Generator``, so a request with a ``seed`` gets the same tokens whatever else shares its
batch; the repetition penalty follows transformers' rule (divide positive logits, multiply negative
ones, for every token already in the prompt or the output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from openautoglm.engine.sequence import Sequence as EngineSequence


class Sampler:
    """Picks the next token of every sampling row; keeps one generator per sequence."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._generators: dict[str, torch.Generator] = {}

    def forget(self, seq_id: str) -> None:
        """Drop a finished sequence's generator."""
        self._generators.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, seqs: Sequence[EngineSequence]) -> list[int]:
        """One token id per row of ``logits`` ``[S, vocab]`` (float32), aligned with ``seqs``."""
        logits = self._penalise(logits, seqs)
        chosen = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(seqs):
            if seq.params.temperature > 0:
                chosen[row] = self._draw(logits[row], seq)
        return [int(token) for token in chosen]

    def _penalise(self, logits: torch.Tensor, seqs: Sequence[EngineSequence]) -> torch.Tensor:
        rows = [r for r, seq in enumerate(seqs) if seq.params.repetition_penalty != 1.0]
        if not rows:
            return logits
        logits = logits.clone()
        for row in rows:
            seq = seqs[row]
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=logits.device)
            scores = logits[row, seen]
            penalty = seq.params.repetition_penalty
            logits[row, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
        return logits

    def _draw(self, scores: torch.Tensor, seq: EngineSequence) -> int:
        params = seq.params
        scores = scores / params.temperature
        if 0 < params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = cumulative - ordered.softmax(dim=-1) >= params.top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = scores.softmax(dim=-1)
        token = torch.multinomial(probs, 1, generator=self._generator(seq))
        return int(token.item())

    def _generator(self, seq: EngineSequence) -> torch.Generator:
        generator = self._generators.get(seq.seq_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seq.params.seed if seq.params.seed is not None else 0)
            self._generators[seq.seq_id] = generator
        return generator
