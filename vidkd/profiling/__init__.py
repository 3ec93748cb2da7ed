"""Cost of a model: FLOPs and parameters (flops.py), latency and peak memory (latency.py)."""
from vidkd.profiling.flops import count_flops  # noqa: F401
from vidkd.profiling.latency import measure_latency, peak_memory_mb  # noqa: F401
