"""PipeQuant benchmarks: load overhead, memory against the floor, component reuse, pre-quantized
reload, scaling, validation latency. Run with `python -m bench`; see bench/README.md."""
