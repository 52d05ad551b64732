"""Tests of request scheduling: queue order, aging, fair share, admission, cancellation."""
