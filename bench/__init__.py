"""Benchmark tooling of fastws: load generator, peer servers, comparison runner.

- ``python -m bench.loadgen URL`` — pipelined-echo load against any server;
- ``python -m bench.servers NAME --port P`` — the echo servers we compare;
- ``python -m bench.run`` — interleaved rounds over several servers, medians,
  ratios, CSV/JSON;
- ``python -m bench.fallback`` — the HTTP fallback transports (SSE, polling)
  against WebSocket: msg/s, p99 latency, server CPU per message;
- ``python -m pytest bench/test_micro.py --benchmark-only`` — codec
  micro-benchmarks.

See ``docs/benchmarks.md`` for the method.
"""
