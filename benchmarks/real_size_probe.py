"""What `real_size.py` measures: the peak memory of a stage's process tree, and int4 decode speed
against the memory roofline of this machine.

Peak RSS of a stage is the larger of two figures, both of the whole process tree:
- the kernel's high-water mark from `wait4` (`ru_maxrss`: the largest VmHWM among the stage's
  process and every descendant it waited for; exact, but per process, not summed), and
- the largest sum of VmRSS over the tree's live processes, polled every 0.2 s (the ONNX builder
  runs in a child while its parent holds memory of its own, so the two add up).
The same poll stops a stage whose tree passes the memory guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
POLL_S = 0.2


@dataclass
class StageRun:
    seconds: float
    peak_rss_bytes: int
    returncode: int | None
    killed: str | None = None  # why the benchmark stopped it (memory guard, time limit)
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_bytes(root: int) -> tuple[int, int]:
    """(sum of VmRSS, largest VmHWM) over `root` and its descendants, in bytes."""
    tree, todo, total, largest = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        total += _status_kib(pid, "VmRSS") * 1024
        largest = max(largest, _status_kib(pid, "VmHWM") * 1024)
        todo.extend(tree.get(pid, []))
    return total, largest


def run_stage(
    argv: list[str],
    *,
    cwd: Path,
    timeout_s: float,
    guard_bytes: int,
    stdin: str | None = None,
    during: Callable[[], dict] | None = None,
    log: Callable[[str], None] = print,
) -> StageRun:
    """Run one stage as its own process group and measure it. `during` (serve) runs in a thread
    while the process lives; when it returns, the process gets SIGINT, as a user's Ctrl-C."""
    out, err = cwd / ".stage.out", cwd / ".stage.err"
    start = time.perf_counter()
    with open(out, "w") as out_file, open(err, "w") as err_file:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            text=True,
            start_new_session=True,  # one group: the guard can stop the whole tree
        )
        if stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.close()
        extra: dict = {}
        worker = _start_during(during, extra, proc)
        peak, hwm, killed, status, usage = 0, 0, None, None, None
        last_note = start
        while status is None:
            pid, wait_status, wait_usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, usage = wait_status, wait_usage
                break
            summed, largest = tree_rss_bytes(proc.pid)
            peak = max(peak, summed)
            hwm = max(hwm, largest)
            elapsed = time.perf_counter() - start
            if killed is None and summed > guard_bytes:
                killed = f"memory guard: tree RSS {summed / GIB:.1f} GiB > {guard_bytes / GIB:.0f}"
            elif killed is None and elapsed > timeout_s:
                killed = f"time limit {timeout_s:.0f} s"
            if killed is not None:
                log(f"  stopping: {killed}")
                os.killpg(proc.pid, signal.SIGKILL)
            elif time.perf_counter() - last_note > 30:
                last_note = time.perf_counter()
                log(f"  ... {elapsed:.0f} s, tree RSS {summed / GIB:.2f} GiB")
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if worker is not None:
        worker.join(timeout=5)
    extra |= {"tree_sum_peak_bytes": peak, "largest_vmhwm_bytes": max(hwm, usage.ru_maxrss * 1024)}
    peak = max(peak, hwm, usage.ru_maxrss * 1024)
    return StageRun(seconds, peak, proc.returncode, killed, out.read_text(), err.read_text(), extra)


def _start_during(
    during: Callable[[], dict] | None, extra: dict, proc: subprocess.Popen
) -> threading.Thread | None:
    if during is None:
        return None

    def body() -> None:
        try:
            extra.update(during())
        except Exception as exc:  # recorded, and the stage is stopped either way
            extra["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    return worker


def read_bandwidth(threads: int, buffer_mib: int = 1024, repeats: int = 5) -> float:
    """Bytes/s that `threads` threads read from memory: each sums its own slice of a buffer far
    larger than the caches (numpy releases the GIL in the reduction); best of `repeats`."""
    import numpy as np

    buffer = np.ones(buffer_mib * MIB // 4, dtype=np.float32)
    slices = np.array_split(buffer, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, slices))
            best = max(best, buffer.nbytes / (time.perf_counter() - start))
    return best


def bytes_per_token(folder: Path) -> dict[str, int]:
    """Weight bytes one decode step reads: every initializer, except that an embedding table read
    by Gather/GatherBlockQuantized only (not also by the tied lm_head) costs one row."""
    import onnx

    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    total, gathered = 0, 0
    for tensor in graph.initializer:
        size = _tensor_bytes(tensor)
        ops = users.get(tensor.name, set())
        if ops and ops <= {"Gather", "GatherBlockQuantized"} and tensor.dims:
            gathered += size
            size //= tensor.dims[0]
        total += size
    return {"weights_read": total, "gathered_tables": gathered}


def _tensor_bytes(tensor) -> int:
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    return len(tensor.raw_data)


def decode_probe(folder: Path, adapter: str | None, tokens: int) -> dict:
    """Decode tokens/s of the int4 folder (one stream, greedy, `tokens` forced) and the roofline
    from read bandwidth measured here with ONNX Runtime's thread count (one per physical core)."""
    from itertools import islice

    from slmforge.models.load import load_tokenizer
    from slmforge.runtime.engine import GenParams
    from slmforge.runtime.onnx_engine import OnnxEngine
    from slmforge.runtime.sampling import Sampler, sampled_tokens

    threads = int(os.environ.get("REAL_SIZE_THREADS", "0")) or _physical_cores()
    engine = OnnxEngine(folder)
    prompt = load_tokenizer(folder)("Plan a three-day trip to Lisbon for a family.")["input_ids"]
    runs = []
    for _ in range(2):  # the first run warms up
        with engine.session(adapter, len(prompt) + tokens) as forward:
            stream = sampled_tokens(forward, prompt, Sampler(GenParams(max_tokens=tokens)))
            next(stream)
            first = time.perf_counter()
            for _ in islice(stream, tokens - 1):
                pass
            runs.append((tokens - 1) / (time.perf_counter() - first))
    bandwidth = read_bandwidth(threads)
    read = bytes_per_token(folder)
    roofline = bandwidth / read["weights_read"]
    return {
        "threads": threads,
        "decode_tokens_per_s": runs[-1],
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "bytes_per_token": read["weights_read"],
        "model_data_bytes": (folder / "model.onnx.data").stat().st_size,
        "roofline_tokens_per_s": roofline,
        "ratio_to_roofline": runs[-1] / roofline,
    }


def _physical_cores() -> int:
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        package = (cpu / "physical_package_id").read_text().strip()
        cores.add((package, (cpu / "core_id").read_text().strip()))
    return len(cores) or os.cpu_count() or 1
