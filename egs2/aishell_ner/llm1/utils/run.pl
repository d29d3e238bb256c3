#!/usr/bin/env python3
"""Local job runner with the interface of Kaldi's run.pl (the name is kept so ESPnet-style stages
and cmd.sh work unchanged; it is written in Python because the espnet wheel ships no runner).

  utils/run.pl [options] [JOB=1:N] <log-file> <command> [<arg> ...]

Runs N jobs in parallel; every "JOB" in the log path and the command becomes the job index.
Each job's output goes to its own log file, framed by the command, start time, run time and exit
code. Arguments without whitespace are passed to bash as they are (so "|" and ">" work, as in
Kaldi); the others are quoted. A command given as one argument is run as a shell command line. Exits 1 naming the failed jobs and showing the end of one failed log.

Options:
  --max-jobs-run K        at most K jobs at a time (default: all)
  --progress-interval S   while jobs run, every S seconds print the jobs finished and the last
                          line of a running job's log, its first 160 characters (default 30; 0 = never)
  --gpu G                 each job gets G GPUs of its own (CUDA_VISIBLE_DEVICES, written in its log): the
                          machine's GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi -L) make S = GPUs / G
                          slots, job i runs on slot (i - 1) mod S, one job a slot at a time; 0: none
  --mem, --num-threads, --time, --config <value>
                          queue resources that Slurm/grid runners take: accepted, meaningless here
"""
import datetime
import os
import threading
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

IGNORED_OPTIONS = {"--mem", "--num-threads", "--num_threads", "--time", "--config"}
FAILED_LOG_LINES = 10


def usage(message):
    sys.exit(f"run.pl: {message}\n{__doc__.split(chr(10) + chr(10))[1]}")


def parse(argv):
    max_jobs, interval, gpus_per_job = None, 30.0, 0
    while argv and argv[0].startswith("--"):
        option = argv[0]
        if len(argv) < 2:
            usage(f"option {option} needs a value")
        value = argv[1]
        if option in ("--max-jobs-run", "--max_jobs_run"):
            max_jobs = int(value)
        elif option in ("--progress-interval", "--progress_interval"):
            interval = float(value)
        elif option == "--gpu":
            if not value.isdigit():
                usage(f"--gpu {value}: expected a number of GPUs per job")
            gpus_per_job = int(value)
        elif option not in IGNORED_OPTIONS:
            usage(f"unknown option {option}")
        argv = argv[2:]
    job_var, first, last = None, 1, 1
    match = argv and re.fullmatch(r"([A-Za-z_]\w*)=(\d+)(?::(\d+))?", argv[0])
    if match:
        job_var, first = match.group(1), int(match.group(2))
        last = int(match.group(3)) if match.group(3) else first
        if last < first:
            usage(f"empty job range {argv[0]}")
        argv = argv[1:]
    if len(argv) < 2:
        usage("expected a log file and a command")
    if len(argv) == 2:  # one argument: a whole shell command line
        return max_jobs, interval, gpus_per_job, job_var, range(first, last + 1), argv[0], argv[1]
    log, command = argv[0], " ".join(a if re.fullmatch(r"\S+", a) else shlex.quote(a) for a in argv[1:])
    return max_jobs, interval, gpus_per_job, job_var, range(first, last + 1), log, command


def machine_gpus():
    """The GPU ids jobs may use: CUDA_VISIBLE_DEVICES where it is set, else every GPU nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def substitute(text, job_var, index):
    return text.replace(job_var, str(index)) if job_var else text


def now():
    return datetime.datetime.now().strftime("%a %b %d %H:%M:%S %Z %Y").replace("  ", " ")


def run_job(command, log_path, slot=None):
    """slot: (lock, GPU ids): the job waits for its slot and runs on its GPUs alone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock, gpus = slot if slot is not None else (threading.Lock(), None)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus is not None else None
    with lock:
        start = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"# {command}\n# Started at {now()}\n#\n")
            if env is not None:
                log.write(f"# CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}\n")
            log.flush()
            code = subprocess.run(["bash", "-c", command], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            log.write(f"# Accounting: time={time.monotonic() - start:.0f} threads=1\n# Ended (code {code}) at {now()}\n")
    return code


LOG_PREFIX = re.compile(r"^(\[\S+\] )?\d{4}-\d\d-\d\d[ T][\d:,]+ \(\S+\) \w+: ")  # [host] date (module:line) LEVEL:
PROGRESS_CHARS = 160


def last_line(path):
    """The log's last line, its logging prefix left off, cut to a console line."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    line = LOG_PREFIX.sub("", lines[-1]) if lines else ""
    return line if len(line) <= PROGRESS_CHARS else line[:PROGRESS_CHARS] + " ..."


def main(argv):
    max_jobs, interval, gpus_per_job, job_var, indices, log, command = parse(argv)
    logs = {i: Path(substitute(log, job_var, i)) for i in indices}
    slots = [None]
    if gpus_per_job > 0:
        gpus = machine_gpus()
        if len(gpus) < gpus_per_job:
            sys.exit(f"run.pl: --gpu {gpus_per_job}: {len(gpus)} GPU(s) here (CUDA_VISIBLE_DEVICES, nvidia-smi -L)")
        slots = [(threading.Lock(), gpus[k * gpus_per_job:(k + 1) * gpus_per_job])
                 for k in range(len(gpus) // gpus_per_job)]
    codes = {}
    start = last_report = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_jobs or len(indices)) as pool:
        running = {pool.submit(run_job, substitute(command, job_var, i), logs[i], slots[(i - indices[0]) % len(slots)]): i
                   for i in indices}
        while running:
            done, _ = wait(running, timeout=min(1.0, interval or 1.0), return_when=FIRST_COMPLETED)
            for future in done:
                codes[running.pop(future)] = future.result()
            if running and interval > 0 and time.monotonic() - last_report >= interval:
                last_report = time.monotonic()
                busy = min(running.values())
                print(f"run.pl: {len(codes)}/{len(indices)} job(s) finished after {last_report - start:.0f} s; "
                      f"{logs[busy]}: {last_line(logs[busy])}", file=sys.stderr, flush=True)
    failed = [i for i in indices if codes[i] != 0]
    if failed:
        pattern = substitute(log, job_var, "*") if job_var else log
        print(f"run.pl: {len(failed)} / {len(indices)} failed, log is in {pattern}", file=sys.stderr)
        print("run.pl: failed: " + ", ".join(f"job {i} (code {codes[i]}, {logs[i]})" for i in failed), file=sys.stderr)
        tail = logs[failed[0]].read_text(encoding="utf-8", errors="replace").splitlines()[-FAILED_LOG_LINES:]
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
