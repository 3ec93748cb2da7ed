"""Forward latency (CPU or CUDA) and peak memory of a model; time and peak memory of training steps."""
import multiprocessing
import random
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


def measure_steps(steps, data, device, warmup=3):
    """{name: (median ms per step, peak MB above the step's start)} of every `step(batch)` in `steps`, run in
    turn, in a shuffled order, on each batch of `data` (so that a slow spell of a shared machine, or what one
    step leaves in the caches, hits every step alike), after `warmup` untimed rounds (the first steps of a
    process are slow)."""
    cuda, order = device.type == "cuda", random.Random(0)
    times, peaks = {name: [] for name in steps}, {name: 0.0 for name in steps}
    for i, batch in enumerate(data):
        for name in order.sample(list(steps), len(steps)):
            step = steps[name]
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                start_mb = torch.cuda.memory_allocated(device) / 2**20
            else:
                start_mb = reset_high_water() / 1024
            start = time.perf_counter()
            step(batch)
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else high_water_kb() / 1024
            if i >= warmup:
                times[name].append(1e3 * seconds)
                peaks[name] = max(peaks[name], peak - start_mb)
    return {name: (statistics.median(times[name]), peaks[name]) for name in steps}


def peak_memory_mb(task, name, kwargs, input_shape):
    """CPU memory of one forward of registered model `name` (`build_for_task(task, name, **kwargs)`) on an input
    of `input_shape`: how far the peak RSS during the forward rises above the RSS after building the model.

    The forward runs in a fresh "spawn" child process, since a high-water mark in this process would already
    be raised by any earlier, bigger model. The child reads the kernel's VmHWM (reset to the current RSS
    after the build) rather than getrusage's ru_maxrss: on Linux ru_maxrss carries over the parent's
    high-water mark through fork and exec, so in the child too it starts at the parent's peak.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_forward_rss_growth, (task, name, kwargs, input_shape))


def _forward_rss_growth(task, name, kwargs, input_shape):
    from vidkd.models.base import build_for_task

    model = build_for_task(task, name, **kwargs).eval()
    before = reset_high_water()
    with torch.inference_mode():
        model(torch.randn(input_shape))
    return (high_water_kb() - before) / 1024


def reset_high_water():
    """Reset this process's peak resident memory (VmHWM) to its current RSS; returns it, in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return high_water_kb()


def high_water_kb():
    """Peak resident memory of this process (VmHWM), in kB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
