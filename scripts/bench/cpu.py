#!/usr/bin/env python3
"""CPU time per request, by thread name, for the load benchmark (scripts/bench.sh).

    cpu.py snapshot PID > before.json    # the server's threads (and every Postgres process)
    cpu.py run wrk.cpu -- wrk ...       # runs the load generator, notes its CPU seconds
    cpu.py per-request before.json after.json REQUESTS [wrk.cpu]

Prints the CPU microseconds each kind of thread spent per request between the two snapshots:
the HTTP workers (tokio-rt-worker), SQLite's ledger writer thread (ledger-writer), the server
in all, the Postgres server's processes in all (their backends, WAL writer, checkpointer), and
the load generator, which shares the machine's cores.
Reads /proc, so it works with any build and costs the server nothing.
"""
import json
import os
import resource
import subprocess
import sys

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path):
    """(name, user + system CPU seconds) of one /proc/.../stat file."""
    with open(stat_path) as f:
        stat = f.read()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / HZ


def snapshot(pid):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, seconds = cpu_seconds(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # a thread that ended meanwhile
        threads[name] = threads.get(name, 0.0) + seconds
    postgres = 0.0
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            name, seconds = cpu_seconds(f"/proc/{proc}/stat")
        except OSError:
            continue
        if name == "postgres":
            postgres += seconds
    return {"threads": threads, "postgres": postgres}


def run(cpu_file, command):
    status = subprocess.call(command)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(cpu_file, "w") as f:
        f.write(str(children.ru_utime + children.ru_stime))
    return status


def per_request(before, after, requests, load_generator=None):
    def us(seconds):
        return f"{seconds / requests * 1e6:.1f}"

    threads = {
        name: seconds - before["threads"].get(name, 0.0)
        for name, seconds in after["threads"].items()
    }
    shown = [
        f"{name} {us(seconds)}"
        for name, seconds in sorted(threads.items())
        if seconds / requests * 1e6 >= 0.5
    ]
    line = f"CPU µs per request: server {us(sum(threads.values()))} ({', '.join(shown)})"
    postgres = after["postgres"] - before["postgres"]
    if postgres > 0:
        line += f"; Postgres {us(postgres)}"
    if load_generator is not None:
        line += f"; wrk {us(load_generator)}"
    print(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"] and len(sys.argv) == 3:
        json.dump(snapshot(sys.argv[2]), sys.stdout)
    elif sys.argv[1:2] == ["run"] and sys.argv[3:4] == ["--"] and len(sys.argv) > 4:
        sys.exit(run(sys.argv[2], sys.argv[4:]))
    elif sys.argv[1:2] == ["per-request"] and len(sys.argv) in (5, 6):
        with open(sys.argv[2]) as b, open(sys.argv[3]) as a:
            load_generator = None
            if len(sys.argv) == 6:
                with open(sys.argv[5]) as g:
                    load_generator = float(g.read())
            per_request(json.load(b), json.load(a), int(sys.argv[4]), load_generator)
    else:
        sys.exit(__doc__)
