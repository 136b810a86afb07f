"""Stress the end of 2-process CPU training: repeat test_distributed's setup (a torchrun job with --sync-bn, one
without, and a 1-process run, all at once on the machine's cores) ROUNDS times; a job that has not exited
within 90 s counts as a hang, and gdb (when installed) prints its workers' C++ stacks before they are made to
print their Python ones (PYTHONFAULTHANDLER) and killed.

    python benchmarks/stress_distributed.py 60          # prints one line per job, then the hang count

The hang it found (benchmarks/RESULTS.md, "Test suite"): the process group freed last by DDP's reducer.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FLAGS = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "16", "--precision", "fp32",
         "--fused-bn", "off", "--threads", "1", "--log-every", "5", "--eval-every", "1000", "--quiet",
         "--iterations", "10"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def finish(job: subprocess.Popen) -> str:
    try:
        _, err = job.communicate(timeout=90)
        return "ok" if job.returncode == 0 else f"rc {job.returncode}: {err[-1500:]}"
    except subprocess.TimeoutExpired:
        workers = children(job.pid)
        job.send_signal(signal.SIGSTOP)  # so that it does not stop the other workers when the first aborts
        for w in workers:
            if shutil.which("gdb"):
                gdb = subprocess.run(["gdb", "-p", str(w), "-batch", "-ex", "thread apply all bt 30"],
                                     capture_output=True, text=True, timeout=120)
                print(f"gdb of worker {w}:\n{gdb.stdout[-12000:]}", flush=True)
            os.kill(w, signal.SIGABRT)
            time.sleep(1)
        job.kill()
        out, err = job.communicate()
        return f"HANG (workers {workers})\nstdout: {out[-500:]}\nstderr: {err[-6000:]}"


def main(rounds: int) -> int:
    hangs = 0
    for i in range(rounds):
        folder = tempfile.mkdtemp()
        jobs = {name: subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc-per-node", "2", "-m", "resnetlab", "train", *FLAGS,
                                        "--out", os.path.join(folder, name), *extra],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                for name, extra in (("synced", ["--sync-bn"]), ("local", []))}
        subprocess.run([sys.executable, "-m", "resnetlab", "train", *FLAGS, "--out", os.path.join(folder, "one")],
                       capture_output=True, env=ENV, check=True)
        for name, job in jobs.items():
            result = finish(job)
            hangs += result.startswith("HANG")
            print(f"round {i} {name}: {result}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{hangs} hang(s) in {2 * rounds} torchrun jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
