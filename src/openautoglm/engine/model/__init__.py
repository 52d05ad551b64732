"""The torch side of the engine: the model runner, its KV cache, sampling and precision."""
