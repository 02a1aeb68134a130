"""Shared helpers of the benchmark: paths, machine facts, statistics, result files, data loading."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"  # generated inputs, logs, routers (git-ignored)
RESULTS = BENCH / "results"
DATA = Path(os.environ.get("THRIFTY_BENCH_DATA", "/work/shared/data"))
PROJECT_PY = Path(os.environ.get("THRIFTY_PROJECT_PYTHON", ROOT / ".venv" / "bin" / "python"))
PEERS_PY = Path(os.environ.get("THRIFTY_PEERS_PYTHON", BENCH / ".venv" / "bin" / "python"))

# CPU layout on the 2-core machine: servers (gateway + fake upstream) on one
# core, the load generator on the other.
SERVER_CPUS = (0,)
LOADGEN_CPUS = (1,)


def log(*parts) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def cpus_available() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning() -> dict:
    """The CPU split used by this run (falls back to no pinning on a 1-CPU box)."""
    cpus = cpus_available()
    if len(cpus) >= 2:
        return {"server_cpus": [cpus[0]], "loadgen_cpus": [cpus[1]], "note": "gateway and fake upstream share one core; load generator on another"}
    return {"server_cpus": cpus, "loadgen_cpus": cpus, "note": "single CPU: no separation possible"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(name: str, obj) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def read_json(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percentiles(values, qs=(50, 90, 99)) -> dict:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    out = {f"p{q:g}": float(np.percentile(a, q)) for q in qs}
    out.update(mean=float(a.mean()), min=float(a.min()), max=float(a.max()), n=int(a.size))
    return out


def package_versions(python: Path, dists: list[str]) -> dict:
    """Versions of ``dists`` in the environment of ``python`` (None if absent or the env is missing)."""
    if not Path(python).exists():
        return {d: None for d in dists}
    code = (
        "import json,sys\nfrom importlib.metadata import version\nout={}\n"
        "for d in sys.argv[1:]:\n    try: out[d]=version(d)\n    except Exception: out[d]=None\nprint(json.dumps(out))"
    )
    try:
        res = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True, timeout=60)
        return json.loads(res.stdout)
    except Exception:  # noqa: BLE001 - informational only
        return {d: None for d in dists}


def machine_info() -> dict:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    git = None
    try:  # read-only: the commit, and whether files outside bench/ differ from it
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout
        dirty = [line[3:] for line in status.splitlines() if line[3:] and not line[3:].startswith("bench/")]
        if git and dirty:
            git += f" + uncommitted changes in {len(dirty)} file(s)"
    except Exception:  # noqa: BLE001
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": git,
        "project_packages": package_versions(
            PROJECT_PY, ["numpy", "scikit-learn", "lightgbm", "fastapi", "uvicorn", "uvloop", "httptools", "openai", "aiohttp", "pydantic"]
        ),
        "peer_packages": package_versions(PEERS_PY, ["litellm", "routellm", "torch", "fastapi", "uvicorn", "uvloop", "openai", "pydantic"]),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")},
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['cpu_model']}, {m['cpus']} cores, {m['mem_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}; "
        f"{m['date']}; commit {m.get('git_commit') or '?'}"
    )


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(v, digits: int = 2, unit: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}{unit}"


# -- data ---------------------------------------------------------------
def outcome_matrix(path: Path, models: list[str] | None = None):
    """Unique prompts of a long outcome file as the Router's fit input.

    Returns ``texts, success (n, m), output_tokens (n, m), models`` with NaN
    where a model has no row for a prompt.
    """
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(path, columns=["prompt_id", "prompt", "model", "success", "output_tokens"])
    if models is not None:
        df = df[df["model"].isin(models)]
    order = list(models) if models is not None else sorted(df["model"].unique())
    prompts = df.drop_duplicates("prompt_id")[["prompt_id", "prompt"]].sort_values("prompt_id").reset_index(drop=True)
    pidx = pd.Index(prompts["prompt_id"])
    midx = pd.Index(order)
    rows = pidx.get_indexer(df["prompt_id"])
    cols = midx.get_indexer(df["model"])
    success = np.full((len(pidx), len(midx)), np.nan)
    tokens = np.full((len(pidx), len(midx)), np.nan)
    success[rows, cols] = df["success"].to_numpy(dtype=np.float64)
    tokens[rows, cols] = df["output_tokens"].to_numpy(dtype=np.float64)
    return list(prompts["prompt"]), success, tokens, order


def models_spread_by_price(all_models: list[str], prices, k: int) -> list[str]:
    """``k`` models evenly spaced over the price-sorted list (cheap to expensive)."""
    import numpy as np

    priced = [m for m in all_models if m in prices]
    priced.sort(key=lambda m: (prices[m].input_usd_per_mtok + prices[m].output_usd_per_mtok, m))
    if k >= len(priced):
        return priced
    idx = np.unique(np.linspace(0, len(priced) - 1, k).round().astype(int))
    return [priced[i] for i in idx]


# -- interference: CPU used by processes that are not part of the measurement ---
class CpuWindow:
    """Busy CPU seconds of the whole machine over a window, to set against our own processes' CPU.

    On a shared machine other sessions' processes steal time from the server
    core; ``other_cores`` (busy seconds not ours / wall seconds) makes that visible.
    """

    def __init__(self):
        import resource

        import psutil

        self._psutil, self._resource = psutil, resource
        self.t0 = time.perf_counter()
        self.cpu0 = psutil.cpu_times(percpu=True)
        self.ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.load0 = os.getloadavg()

    @staticmethod
    def _busy(t) -> float:
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def close(self, own_cpu_s: float) -> dict:
        """``own_cpu_s``: CPU seconds of our long-lived servers over the window (children reaped meanwhile are added here)."""
        cpu1 = self._psutil.cpu_times(percpu=True)
        ch1 = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - self.t0
        busy = [self._busy(b) - self._busy(a) for a, b in zip(self.cpu0, cpu1)]
        children = (ch1.ru_utime - self.ch0.ru_utime) + (ch1.ru_stime - self.ch0.ru_stime)
        other = max(0.0, sum(busy) - own_cpu_s - children)
        return {
            "wall_s": wall,
            "busy_per_cpu": [b / wall for b in busy],
            "ours_cpu_s": own_cpu_s + children,
            "other_cpu_s": other,
            "other_cores": other / wall if wall > 0 else 0.0,
            "loadavg_1m": [self.load0[0], os.getloadavg()[0]],
        }
