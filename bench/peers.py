"""The peers of bench/peers.sh: the same trivial tasks (return the input) through Dask
distributed and Celery, with their standard APIs and default settings, on this machine.

    python bench/peers.py dask N        # LocalCluster of 2 worker processes, client.map
    python bench/peers.py celery N      # 2 prefork worker processes, Redis broker and backend

Prints one JSON line: {"peer": ..., "tasks": N, "seconds": S, "tasks_per_s": R}. Timing
starts when the tasks are submitted and ends when every result is back, the way the grid's
figure runs from its job's start to its end; start-up of the cluster or workers is excluded.
Neither peer verifies anything: every task runs once and its answer is believed.
"""

import json
import os
import subprocess
import sys
import tempfile
import time


def identity(x):
    return x


def run_dask(n):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        start = time.perf_counter()
        futures = client.map(identity, range(n), pure=False)
        results = client.gather(futures)
        seconds = time.perf_counter() - start
    assert results == list(range(n))
    return seconds


CELERY_APP = """
from celery import Celery
app = Celery("peers", broker="{broker}", backend="{broker}")
@app.task
def identity(x):
    return x
"""


def run_celery(n):
    broker = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379/15")
    workdir = tempfile.mkdtemp(prefix="peers-celery-")
    with open(os.path.join(workdir, "peers_app.py"), "w") as f:
        f.write(CELERY_APP.format(broker=broker))
    sys.path.insert(0, workdir)
    import redis
    redis.Redis.from_url(broker).flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "peers_app", "worker", "--concurrency=2",
         "--pool=prefork", "--loglevel=WARNING", "--without-gossip", "--without-mingle"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from celery import group
        import peers_app
        # Wait until the worker answers.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if peers_app.identity.delay(-1).get(timeout=2) == -1:
                    break
            except Exception:
                pass
        start = time.perf_counter()
        results = group(peers_app.identity.s(i) for i in range(n)).apply_async().get(timeout=3600)
        seconds = time.perf_counter() - start
        assert results == list(range(n))
        return seconds
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        redis.Redis.from_url(broker).flushdb()


def main():
    peer, n = sys.argv[1], int(sys.argv[2])
    seconds = {"dask": run_dask, "celery": run_celery}[peer](n)
    print(json.dumps({"peer": peer, "tasks": n, "seconds": round(seconds, 3),
                      "tasks_per_s": round(n / seconds, 1)}))


if __name__ == "__main__":
    main()
