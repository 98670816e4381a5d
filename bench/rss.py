"""RSS sampling for bench/memory.py: the resident memory of a process (tree) from /proc, attributed to
named phases by a sampler thread. Standard library only (the `run` mode's parent adds no JAX)."""

from __future__ import annotations

import threading
import time


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            kids = []
        out += kids
        todo += kids
    return out


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants, MB (VmRSS from /proc)."""
    return sum(_status_kb(p, "VmRSS") for p in [pid, *_children(pid)]) / 1024.0


def self_rss_mb() -> float:
    return _status_kb("self", "VmRSS") / 1024.0


def self_hwm_mb() -> float:
    return _status_kb("self", "VmHWM") / 1024.0


class Phases:
    """A sampler thread attributing RSS samples to the current phase (set with `mark`)."""

    def __init__(self, read, interval: float = 0.02):
        self.read, self.interval = read, interval
        self.rows: list[dict] = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.mark("start")
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def mark(self, name: str, **extra) -> None:
        rss = self.read()
        with self.lock:
            if self.rows:
                cur = self.rows[-1]
                cur["end_mb"] = rss
                cur["peak_mb"] = max(cur["peak_mb"], rss)
                cur["s"] = round(time.time() - cur["t0"], 2)
                cur.update(extra)
            self.rows.append({"phase": name, "t0": time.time(), "start_mb": rss, "peak_mb": rss})

    def annotate(self, **extra) -> None:
        """Add fields to the phase that just ended (the one before the current)."""
        with self.lock:
            if len(self.rows) >= 2:
                self.rows[-2].update(extra)

    def _loop(self):
        while not self.stop_ev.wait(self.interval):
            rss = self.read()
            with self.lock:
                self.rows[-1]["peak_mb"] = max(self.rows[-1]["peak_mb"], rss)

    def stop(self) -> list[dict]:
        self.stop_ev.set()
        self.thread.join()
        self.mark("end")
        rows = self.rows[:-1]
        for r in rows:
            r.pop("t0", None)
            for k in ("start_mb", "peak_mb", "end_mb"):
                if k in r:
                    r[k] = round(r[k])
        return rows


def print_table(rows: list[dict], extra_cols: tuple[str, ...] = ()) -> None:
    cols = ("phase", "s", "start_mb", "peak_mb", "end_mb", *extra_cols)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
