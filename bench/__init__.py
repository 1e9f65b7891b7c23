"""Benchmark suite for the chat server: a baseline broadcast server, a load
generator and a runner that compares them (see bench/README.md)."""
