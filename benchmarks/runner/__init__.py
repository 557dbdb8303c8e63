"""Benchmark runners that execute artifacts on a device (see devices/base.py for the protocol)."""
