"""Tests of the local inference engine: sequences, block manager, step scheduler."""
