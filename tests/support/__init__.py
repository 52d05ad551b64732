"""Test helpers: real servers on free ports, fake upstreams."""
