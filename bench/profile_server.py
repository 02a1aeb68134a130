"""Where a gateway's CPU goes: py-spy samples of one server under load (concurrency 50 by default).

Not part of ``run_all`` (sampling costs the server a little); a tool for
working on the gateway goal. Starts the fake upstream and the target exactly
as ``bench.gateways`` does, warms it up, then records it with py-spy (from
``bench/.venv``, installed by ``setup_peers.sh``) for ``--seconds`` while the
load generator runs, and writes the functions with the most samples, by own
time and by inclusive time, to ``bench/results/profile-<target>.txt``.

    python -m bench.profile_server --target thrifty [--seconds 15] [--stream] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time

from bench.common import PEERS_PY, RESULTS, ROOT, WORK, log, pinning
from bench.gateways import prompts_file, run_loadgen, start_config, start_upstream


def aggregate(raw_path, top: int = 40) -> str:
    own, incl, incl_fn = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:  # the function, whichever of its lines
            incl_fn[f] += n
    if not total:
        return "no samples"

    by_package = collections.Counter()
    for f, c in own.items():
        where = f.rpartition("(")[2].rstrip(")")
        by_package[where.split("/")[0].split(".py")[0] if "/" in where or ".py" in where else f] += c

    def block(title, counter, n=top):
        lines = [f"{title} (share of {total} samples)"]
        lines += [f"{100 * c / total:6.1f}%  {f}" for f, c in counter.most_common(n)]
        return "\n".join(lines)

    return (block("own time by package (first path component of the file)", by_package, 25) + "\n\n"
            + block("own time", own) + "\n\n" + block("inclusive time by function", incl_fn)
            + "\n\n" + block("inclusive time by line", incl))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="thrifty", choices=("thrifty", "passthrough", "litellm", "routellm"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = ap.parse_args(argv)
    pyspy = PEERS_PY.parent / "py-spy"
    if not pyspy.exists():
        sys.exit("py-spy missing: run bench/setup_peers.sh")
    pin = pinning()
    prompts = prompts_file()
    upstream, base = start_upstream(pin["server_cpus"])
    server = None
    try:
        server, url, model, _ = start_config(args.target, base, pin["server_cpus"])
        run_loadgen(url, model, args.concurrency, args.stream, (2000, 3.0, 200), pin["loadgen_cpus"], prompts)  # warm
        raw = WORK / f"profile-{args.target}.raw"
        spy = subprocess.Popen([str(pyspy), "record", "--pid", str(server.pid), "--subprocesses", "--rate", str(args.rate),
                                "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw), "--nonblocking", "--gil"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        r = run_loadgen(url, model, args.concurrency, args.stream, (10**6, args.seconds - 1, 0), pin["loadgen_cpus"], prompts)
        spy.wait(args.seconds + 30)
        report = (f"target {args.target}, concurrency {args.concurrency}, {'stream' if args.stream else 'json'}, "
                  f"{r['throughput_rps']:.0f} req/s, errors {r['errors']}\n\n" + aggregate(raw))
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = ("-stream" if args.stream else "") + (f"-c{args.concurrency}" if args.concurrency != 50 else "")
        out = RESULTS / f"profile-{args.target}{suffix}.txt"
        out.write_text(report + "\n")
        log(f"wrote {out.relative_to(ROOT)}")
        print(report[:6000])
    finally:
        if server:
            server.stop()
        upstream.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
