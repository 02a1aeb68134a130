"""Part 5 — training on Dask: ``thrifty train`` in one process vs ``--dask local:2``, at 1M and 5M outcome rows.

Inputs are the MMLU-Pro resamples of ``bench/train_scale.py`` (whole prompts
drawn with replacement, new ids; 1M rows = 34,653 prompts × 29 models, 5M
rows about 173k prompts), split into a directory of 8 Parquet parts. Both
modes read the same directory (one process reads the parts in turn; Dask
reads them on the workers) and train with seed 0, so their held-out split and
test prompts are the same.

Each run is ``thrifty train --logs FILE --prices prices.csv --predictor lightgbm [--dask local:2]``
in a subprocess with its own THRIFTY_HOME (embedded MLflow) under bench/work,
under ``nice``. Recorded per run: wall time, CPU seconds, the peak RSS of every
process of the tree sampled every 0.2 s (the driver — the ``thrifty train``
process, which also hosts the LocalCluster's scheduler and nannies — and each
Dask worker process), the kernel's ``ru_maxrss`` of the driver, the load
average before and after, and the held-out mean AUC of the registered run
(``test/mean_auc`` in MLflow). Goal: the two AUCs within 0.005 at each size,
and both fit in the machine's 24 GiB.

On a shared machine a run whose process tree passes ``--rss-limit-gib``
(default 20) is stopped and reported as "over the memory limit" rather than
pushing other sessions out of memory.

    .venv/bin/python -m bench.train_dask            # 1M and 5M, both modes
    .venv/bin/python -m bench.train_dask --quick    # 100k only (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import hooks
from bench.common import PROJECT_PY, ROOT, WORK, log, machine_info, md_table, write_json

SIZES = {"100k": 100_000, "1M": 1_000_000, "5M": 5_000_000}
# The Dask fit is LightGBM's (lightgbm.dask): both modes fit that predictor, so they compare like with like.
MODES = {"one process": ["--predictor", "lightgbm"], "dask local:2": ["--predictor", "lightgbm", "--dask", "local:2"]}
TIMEOUT_S = {"100k": 900, "1M": 1800, "5M": 5400}
AUC_TOLERANCE = 0.005
HOME = WORK / "train_dask"


N_PARTS = 8


def build_input(label: str) -> tuple[Path, int, int]:
    """The resampled log as a directory of ``N_PARTS`` Parquet parts (what Spark or Dask would write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.train_scale import build_input as build

    single, rows, prompts = build(label, SIZES[label])
    directory = single.with_suffix("")  # bench/work/train/mmlu-pro-1M/
    if not (directory / f"part.{N_PARTS - 1}.parquet").exists():
        directory.mkdir(parents=True, exist_ok=True)
        source = pq.ParquetFile(single)
        batch = -(-rows // N_PARTS)
        for k, chunk in enumerate(source.iter_batches(batch_size=batch)):
            pq.write_table(pa.Table.from_batches([chunk]), directory / f"part.{k}.parquet", compression="zstd")
    return directory, rows, prompts


def build_input_subprocess(label: str) -> tuple[Path, int, int]:
    """The input file, built in a child process so this one never holds the frame."""
    res = subprocess.run([str(PROJECT_PY), "-m", "bench.train_dask", "--build", label], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"building the {label} input failed: {res.stderr[-2000:]}")
    path, rows, prompts = res.stdout.strip().splitlines()[-1].split("\t")
    return Path(path), int(rows), int(prompts)


class ProcessPeaks(threading.Thread):
    """Peak RSS of each process of a tree, sampled every ``interval`` s; stops the tree past ``limit`` bytes in all."""

    def __init__(self, pid: int, limit: float, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.limit, self.interval = pid, limit, interval
        self.peaks: dict[int, dict] = {}
        self.peak_total = 0
        self.over_limit = False
        self.stop_event = threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop_event.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.peaks:
                        self.peaks[p.pid] = {"role": self._role(p), "peak_rss": 0}
                except psutil.Error:
                    continue
                total += rss
                self.peaks[p.pid]["peak_rss"] = max(self.peaks[p.pid]["peak_rss"], rss)
            self.peak_total = max(self.peak_total, total)
            if total > self.limit and not self.over_limit:
                self.over_limit = True
                os.killpg(self.pid, signal.SIGKILL)  # our own session: the run and its workers
            self.stop_event.wait(self.interval)

    def _role(self, p) -> str:
        if p.pid == self.pid:
            return "driver"
        cmd = " ".join(p.cmdline())
        if "resource_tracker" in cmd:
            return "resource tracker"
        if "spawn_main" in cmd or "forkserver" in cmd:
            return "dask worker"
        return "child"


def run_one(cmd: list[str], env: dict, timeout: float, log_path: Path, limit_gib: float) -> dict:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with open(log_path, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        sampler = ProcessPeaks(proc.pid, limit_gib * 2**30)
        sampler.start()
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        sampler.stop_event.set()
        sampler.join(2)
    try:  # workers of a killed run must not outlive it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = os.waitstatus_to_exitcode(status)
    processes = sorted(sampler.peaks.values(), key=lambda p: (p["role"] != "driver", -p["peak_rss"]))
    processes = [{"role": p["role"], "peak_rss_gib": p["peak_rss"] / 2**30} for p in processes if p["peak_rss"] > 50 * 2**20]
    status_text = "ok" if code == 0 else ("over the memory limit" if sampler.over_limit else "timeout" if timed_out else f"exit {code}")
    return {
        "status": status_text,
        "exit_code": code,
        "wall_s": wall,
        "cpu_s_driver": ru.ru_utime + ru.ru_stime,  # the driver and the children it reaped (the workers)
        "peak_rss_gib_driver_kernel": ru.ru_maxrss * 1024 / 2**30,
        "peak_rss_gib_tree": sampler.peak_total / 2**30,
        "processes": processes,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "log": str(log_path.relative_to(ROOT)),
        "log_tail": log_path.read_text(errors="replace").splitlines()[-6:],
    }


def held_out_auc(home: Path) -> float | None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    values = [r.data.metrics.get("test/mean_auc") for r in runs]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def run(quick: bool, limit_gib: float, sizes: list[str] | None = None) -> dict:
    labels = sizes or (["100k"] if quick else ["1M", "5M"])
    rows = []
    for label in labels:
        path, n_rows, n_prompts = build_input_subprocess(label)
        for mode, extra in MODES.items():
            home = HOME / f"{label}-{mode.replace(' ', '_').replace(':', '')}"
            shutil.rmtree(home, ignore_errors=True)
            env = hooks.clean_env({**hooks.train_env(home.parent), "THRIFTY_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                                   "OMP_NUM_THREADS": "1"})
            cmd = [*hooks.train_command(path), *extra]
            log(f"train dask {label} ({n_rows:,} rows, {n_prompts:,} prompts), {mode}; load {os.getloadavg()[0]:.2f}")
            r = run_one(cmd, env, TIMEOUT_S[label], HOME / "logs" / f"{label}-{mode.replace(' ', '_').replace(':', '')}.log", limit_gib)
            r["auc"] = held_out_auc(home) if r["status"] == "ok" else None
            r.update(size=label, rows=n_rows, prompts=n_prompts, mode=mode, command="nice -n 10 " + " ".join(cmd), input=str(path.relative_to(ROOT)))
            log(f"  {r['status']} in {r['wall_s']:.0f} s, tree peak {r['peak_rss_gib_tree']:.2f} GiB, AUC {r['auc']}, "
                f"processes {[(p['role'], round(p['peak_rss_gib'], 2)) for p in r['processes']]}")
            rows.append(r)
            write_json("train_dask-progress", {"part": "train_dask", "rows": rows})  # kept if a later run is stopped
    return summarize(rows, quick, limit_gib)


def summarize(rows: list[dict], quick: bool, limit_gib: float) -> dict:
    """The result of the runs in ``rows``: each size's AUC gap between the two modes."""
    comparisons = []
    for label in dict.fromkeys(r["size"] for r in rows):
        pair = [r for r in rows if r["size"] == label]
        aucs = [r["auc"] for r in pair]
        if len(pair) == 2 and None not in aucs:
            gap = abs(aucs[0] - aucs[1])
            comparisons.append({"size": label, "auc_gap": gap, "met": gap <= AUC_TOLERANCE})
        else:
            comparisons.append({"size": label, "auc_gap": None, "met": False})
    return {"part": "train_dask", "quick": quick, "rss_limit_gib": limit_gib, "rows": rows, "auc_tolerance": AUC_TOLERANCE, "comparisons": comparisons}


def table(result: dict) -> str:
    def procs(r, role):
        return ", ".join(f"{p['peak_rss_gib']:.2f}" for p in r["processes"] if p["role"] == role) or "–"

    out = md_table(
        ["size", "rows", "prompts", "mode", "status", "wall s", "driver peak GiB", "worker peaks GiB", "tree peak GiB", "held-out AUC", "load before/after"],
        [[r["size"], f"{r['rows']:,}", f"{r['prompts']:,}", r["mode"], r["status"], f"{r['wall_s']:.0f}", procs(r, "driver"),
          procs(r, "dask worker"), f"{r['peak_rss_gib_tree']:.2f}", f"{r['auc']:.4f}" if r["auc"] is not None else "–",
          f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"] for r in result["rows"]],
    )
    lines = [f"{c['size']}: AUC gap {c['auc_gap']:.4f} ({'within' if c['met'] else 'NOT within'} {result['auc_tolerance']})"
             if c["auc_gap"] is not None else f"{c['size']}: no AUC pair (a run did not finish)" for c in result["comparisons"]]
    sizes = {r["size"] for r in result["rows"]}
    missing = [label for label in ("1M", "5M") if label not in sizes and not result.get("quick")]
    note = f" Not run: {', '.join(missing)} (the run was stopped early)." if missing else ""
    return out + "\n\n" + "; ".join(lines) + "." + note


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k rows only")
    ap.add_argument("--sizes", default=None, help=f"comma-separated subset of {list(SIZES)}")
    ap.add_argument("--rss-limit-gib", type=float, default=20.0, help="stop a run whose process tree passes this")
    ap.add_argument("--build", default=None, choices=list(SIZES), help=argparse.SUPPRESS)
    ap.add_argument("--from-progress", action="store_true", help="write the result of the runs finished so far (results/train_dask-progress.json) and stop")
    args = ap.parse_args(argv)
    if args.from_progress:
        from bench.common import read_json

        result = summarize(read_json("train_dask-progress")["rows"], args.quick, args.rss_limit_gib)
        result["machine"] = machine_info()
        result["stopped_early"] = True
        write_json("train_dask", result)
        print(table(result))
        return
    if args.build:
        path, rows, prompts = build_input(args.build)
        print(f"{path}\t{rows}\t{prompts}")
        return
    sizes = args.sizes.split(",") if args.sizes else None
    result = run(args.quick, args.rss_limit_gib, sizes)
    result["machine"] = machine_info()
    write_json("train_dask" + ("-partial" if sizes else ""), result)
    print(table(result))
    print(json.dumps(result["comparisons"]))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
