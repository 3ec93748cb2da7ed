"""Forward latency (CPU or CUDA) and peak memory of a model."""
import multiprocessing
import resource
import statistics
import time

import torch


def measure_latency(model, input_shape, device, warmup=3, runs=10):
    """Time `runs` forwards of `model` on a random clip of `input_shape` on `device`, after `warmup` untimed
    ones, under torch.inference_mode. Returns dict(median_ms, min_ms, max_ms); on CUDA (synchronised around
    every forward) also peak_mb = torch.cuda.max_memory_allocated during the forwards, weights included."""
    device = torch.device(device)
    model = model.to(device).eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.randn(input_shape, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    result = dict(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times))
    if cuda:
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def peak_memory_mb(name, kwargs, input_shape):
    """CPU memory of one forward of registered model `name` (`build_model(name, **kwargs)`) on a clip of
    `input_shape`: the growth of the max RSS across the forward over its value after building the model.

    The forward runs in a fresh "spawn" child process, since the max RSS is a high-water mark for the whole
    process life: in this process it would already be raised by any earlier, bigger model.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_forward_rss_growth, (name, kwargs, input_shape))


def _forward_rss_growth(name, kwargs, input_shape):
    from vidkd.models import build_model

    model = build_model(name, **kwargs).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        model(torch.randn(input_shape))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux
