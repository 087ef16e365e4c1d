"""System metrics of a long job (pretraining, embedding, LoRA), sampled beside it.

MLflow's own monitor logs to a live run only; cytofm's jobs mostly spool theirs, so a thread
samples the same figures under the same names (``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_0_memory_usage_megabytes``, ...) and
hands them to the job's run, live or spooled, every ``interval_s`` seconds and once at the end.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping

__all__ = ["SystemSampler", "sample_system"]


def _gpu_metrics() -> dict[str, float]:
    """Per-GPU memory (and utilisation where NVML is there) of a process that uses CUDA."""
    torch = sys.modules.get("torch")  # never imported here for a job that does not use it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {}
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        used = (total - free) / 2**20
        out[f"system/gpu_{i}_memory_usage_megabytes"] = used
        out[f"system/gpu_{i}_memory_usage_percentage"] = 100 * used / max(total / 2**20, 1e-9)
        try:
            out[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
        except Exception:  # no NVML bindings: memory only
            pass
    return out


def sample_system() -> dict[str, float]:
    """One sample: CPU use since the last call, memory of the machine and of this process,
    and the GPUs this process has initialised."""
    import psutil

    memory = psutil.virtual_memory()
    return {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/process_memory_rss_megabytes": psutil.Process().memory_info().rss / 2**20,
        **_gpu_metrics(),
    }


class SystemSampler:
    """Calls ``log(metrics, step)`` with a :func:`sample_system` every ``interval_s`` seconds
    from a daemon thread, and once more on :meth:`stop`."""

    def __init__(self, log: Callable[[Mapping[str, float], int], None], interval_s: float):
        self._log = log
        self._interval = float(interval_s)
        self._stop = threading.Event()
        self._step = 0
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)

    def start(self) -> SystemSampler:
        import psutil

        psutil.cpu_percent(interval=None)  # the first reading is measured from here
        self._thread.start()
        return self

    def _emit(self) -> None:
        try:
            self._log(sample_system(), self._step)
        except Exception:  # metrics never fail a job
            return
        self._step += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._emit()
