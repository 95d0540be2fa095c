"""farm's client and worker libraries against PHP's gearman extension, in one run.

    python -m bench.bench_client [--seq 3000] [--map 20000] [--inflight 64]

For farm's server and for gearmand: two ``farm worker workers.text:echo``
processes serve; then farm.Client and a PHP GearmanClient script (the C
extension) each measure sequential jobs/s with p50/p99 latency (one job at a
time), and pipelined throughput (farm: ``Client.map``; PHP: addTask/runTasks).
Prints a markdown table with farm/PHP ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import farm  # noqa: E402
from tests.helpers.servers import Server, start_farm_server, start_gearmand  # noqa: E402

PAYLOAD = b"0123456789abcdef"

PHP = r"""
[$port, $n, $m, $inflight] = array_map('intval', array_slice($argv, 1));
$c = new GearmanClient();
$c->addServer('127.0.0.1', $port);
$lat = [];
$t0 = hrtime(true);
for ($i = 0; $i < $n; $i++) {
    $s = hrtime(true);
    $c->doNormal('echo', '0123456789abcdef');
    $lat[] = (hrtime(true) - $s) / 1e3;
}
$seq = $n / ((hrtime(true) - $t0) / 1e9);
sort($lat);
$done = 0;
$c->setCompleteCallback(function ($task) use (&$done) { $done++; });
$t0 = hrtime(true);
for ($sent = 0; $sent < $m; ) {
    for ($k = 0; $k < $inflight * 16 && $sent < $m; $k++, $sent++) {
        $c->addTask('echo', '0123456789abcdef');
    }
    $c->runTasks();
}
$pipe = $done / ((hrtime(true) - $t0) / 1e9);
echo json_encode(['seq' => $seq, 'p50' => $lat[intdiv($n, 2)],
    'p99' => $lat[intdiv($n * 99, 100)], 'map' => $pipe]);
"""


def farm_numbers(addr: str, n: int, m: int, inflight: int) -> dict[str, float]:
    with farm.Client(addr) as c:
        for _ in range(200):  # warm up connections and the workers
            c.call("echo", PAYLOAD)
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            c.call("echo", PAYLOAD)
            lat.append((time.perf_counter() - s) * 1e6)
        seq = n / (time.perf_counter() - t0)
        lat.sort()
        t0 = time.perf_counter()
        count = sum(1 for _ in c.map("echo", (PAYLOAD for _ in range(m)), max_in_flight=inflight))
        pipe = count / (time.perf_counter() - t0)
    return {"seq": seq, "p50": lat[n // 2], "p99": lat[n * 99 // 100], "map": pipe}


def php_numbers(port: int, n: int, m: int, inflight: int) -> dict[str, float] | None:
    php = shutil.which("php")
    if not php:
        return None
    cmd = [php, "-r", PHP, "--", str(port), str(n), str(m), str(inflight)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not out.stdout.startswith("{"):
        print(f"php failed: {out.stderr.strip() or out.stdout.strip()}", file=sys.stderr)
        return None
    return json.loads(out.stdout)


def start_workers(addr: str, count: int) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]
    return [
        subprocess.Popen([*cmd, "workers.text:echo", "--server", addr], cwd=ROOT)
        for _ in range(count)
    ]


def run_one(server: Server, args: argparse.Namespace) -> tuple[dict, dict | None]:
    workers = start_workers(server.addr, 2)
    try:
        mine = farm_numbers(server.addr, args.seq, args.map, args.inflight)
        php = php_numbers(server.port, args.seq, args.map, args.inflight)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(5)
    return mine, php


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=3000, help="sequential jobs per client")
    ap.add_argument("--map", type=int, default=20000, help="pipelined jobs per client")
    ap.add_argument("--inflight", type=int, default=64, help="farm map's max_in_flight")
    args = ap.parse_args()
    rows = []
    for kind, start in (("farm", start_farm_server), ("gearmand", start_gearmand)):
        server = start()
        try:
            mine, php = run_one(server, args)
        finally:
            server.stop()
        rows.append((kind, mine, php))
    print("\n| server | metric | farm client | PHP ext | farm/PHP |")
    print("|---|---|---:|---:|---:|")
    labels = [
        ("seq", "sequential jobs/s", True),
        ("p50", "p50 latency µs", False),
        ("p99", "p99 latency µs", False),
        ("map", "pipelined jobs/s (2 workers)", True),
    ]
    for kind, mine, php in rows:
        for key, label, higher_better in labels:
            theirs = php[key] if php else None
            ratio = "-" if not theirs else f"{mine[key] / theirs:.2f}x"
            if theirs and not higher_better:
                ratio += " (lower is better)"
            other = f"{theirs:,.0f}" if theirs else "n/a"
            print(f"| {kind} | {label} | {mine[key]:,.0f} | {other} | {ratio} |")


if __name__ == "__main__":
    main()
