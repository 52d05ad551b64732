"""Local inference engine: sequences, paged KV-cache bookkeeping, step scheduler, runner."""
