"""The CPU an idle Ray process takes: what each of a run's helper processes costs the cores that train.

Starts a local Ray as raytune_st starts one (runtime.worker_env, LOCAL_SYSTEM_CONFIG, no
dashboard), creates `--actors` actors that do nothing, waits for start-up to settle, and then
measures every process's CPU over `--seconds`. Each Ray worker process wakes every 10 ms to
check for signals (a fixed timer in Ray's core worker), so an idle actor is never free; a
training run on one machine keeps about a dozen such processes (Train's controller,
synchronization and placement-group cleaner actors, Ray Data's stats, autoscaling and dataset
manager actors, the progress queue, idle workers) beside the one that trains.

    python benchmarks/ray_idle_cost.py                 # 4 idle actors, 30 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import children


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds to wait after the actors started")
    parser.add_argument("--wait", type=float, default=240, help="most seconds to wait for the load average to fall below 0.5")
    cli = parser.parse_args(argv)

    import psutil
    import ray

    load = children.quiet_load(cli.wait)
    marked = f"  (above {children.QUIET_LOAD}: not a quiet-machine figure)" if load >= children.QUIET_LOAD else ""
    print(f"1-minute load average before the run: {load:.2f}{marked}", flush=True)
    children.start_local_ray()

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    actors = [Idle.remote() for _ in range(cli.actors)]
    actor_pids = set(ray.get([actor.pid.remote() for actor in actors]))
    time.sleep(cli.settle)

    me = psutil.Process()

    def cpu_seconds() -> dict[int, tuple[str, float]]:
        seen = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                seen[proc.pid] = (proc.name(), sum(proc.cpu_times()[:2]))
            except psutil.Error:
                continue
        return seen

    before, began = cpu_seconds(), time.perf_counter()
    time.sleep(cli.seconds)
    after, elapsed = cpu_seconds(), time.perf_counter() - began
    ray.shutdown()

    shares = {pid: (name, (cpu - before[pid][1]) / elapsed * 100) for pid, (name, cpu) in after.items() if pid in before}
    for pid, (name, share) in sorted(shares.items(), key=lambda item: -item[1][1]):
        print(f"{pid:>8}  {name[:32]:32} {share:5.2f}% of one core{'  (idle actor)' if pid in actor_pids else ''}")
    idle = [share for pid, (_, share) in shares.items() if pid in actor_pids]
    print(
        f"idle actor: {statistics.median(idle):.2f}% of one core (median of {len(idle)}, {min(idle):.2f}-{max(idle):.2f}); "
        f"all of Ray's processes and this driver: {sum(share for _, share in shares.values()):.2f}%"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
