"""Speed and memory benchmarks; ``python -m benchmarks.run`` writes docs/performance.md."""
