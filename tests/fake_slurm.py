"""Stand-ins for SLURM's commands, for what one machine's real cluster cannot show: jobs on several
nodes (tests/test_slurm_nodes.py). Everything one node can run goes to the real single-node cluster
(scripts/slurm_cluster.sh, tests/test_slurm.py).

``sbatch``, ``srun``, ``sacct``, ``squeue``, ``scancel`` and ``scontrol requeue`` on one machine:

    python tests/fake_slurm.py install BIN_DIR      # writes the executables; put BIN_DIR first on PATH

``sbatch SCRIPT`` reads the script's ``#SBATCH`` lines, prints ``Submitted batch job N`` and starts a
detached runner that executes the script with bash (each array index in turn), with the variables
SLURM sets (job id, name, nodes, tasks per node, array ids, node list 127.0.0.1, restart count).
``srun CMD`` starts nodes x tasks-per-node copies of CMD with each task's SLURM_PROCID,
SLURM_LOCALID and SLURM_NODEID (each "node" a set of processes on this machine), writing
``--output``/``--error`` with %j/%t/%A/%a expanded; other options are ignored.
``scancel JOB --signal SIG`` signals the job's tasks (what SLURM does before a time limit);
``scancel JOB`` cancels it. ``scontrol requeue JOB`` ends the running script (SIGTERM, then SIGKILL
after 3 s, as KillWait) and runs it again with SLURM_RESTART_COUNT incremented. ``sacct`` reports
PENDING / RUNNING / COMPLETED / FAILED / CANCELLED. State lives in ``$FAKE_SLURM_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "scontrol")


def state_dir() -> Path:
    d = Path(os.environ["FAKE_SLURM_DIR"])
    (d / "jobs").mkdir(parents=True, exist_ok=True)
    return d


def _job_file(key: str, suffix: str = "json") -> Path:
    return state_dir() / "jobs" / f"{key}.{suffix}"


def _set_state(key: str, state: str, **extra) -> None:
    path = _job_file(key)
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(state=state, **extra)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def _keys(job: str) -> list[str]:
    """State keys of a job id as given on a command line: ``N`` (all array tasks) or ``N_i``."""
    names = sorted(p.stem for p in (state_dir() / "jobs").glob("*.json"))
    return [k for k in names if k == job or k.startswith(f"{job}_")]


# -- sbatch and the runner ------------------------------------------------------------------------


def sbatch(args: list[str]) -> int:
    script = Path(args[-1]).resolve()
    params = _sbatch_params(script)
    counter = state_dir() / "next_id"
    job_id = int(counter.read_text()) if counter.exists() else 4100
    counter.write_text(str(job_id + 1))
    indices = _array_indices(params.get("array"))
    for idx in indices:
        _set_state(f"{job_id}" if idx is None else f"{job_id}_{idx}", "PENDING")
    log = open(state_dir() / f"runner_{job_id}.log", "ab")
    subprocess.Popen([sys.executable, __file__, "_run", str(job_id), str(script)], stdout=log, stderr=log,
                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    print(f"Submitted batch job {job_id}")
    return 0


def _sbatch_params(script: Path) -> dict[str, str]:
    params = {}
    for line in script.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if m:
            params[m.group(1)] = (m.group(2) or "true").strip("'\"")
    return params


def _array_indices(spec):
    if not spec:
        return [None]
    first, last = spec.split("%")[0].split("-")
    return list(range(int(first), int(last) + 1))


def run(job_id: str, script: str) -> None:
    params = _sbatch_params(Path(script))
    for idx in _array_indices(params.get("array")):
        _run_one(int(job_id), idx, Path(script), params)


def _run_one(job_id: int, idx, script: Path, params: dict[str, str]) -> None:
    key = f"{job_id}" if idx is None else f"{job_id}_{idx}"
    nodes = int(params.get("nodes", 1))
    per_node = int(params.get("ntasks-per-node", 1))
    env = {**os.environ, "SLURM_JOB_ID": str(job_id if idx is None else job_id * 100 + idx),
           "SLURM_JOB_NAME": params.get("job-name", Path(script).name), "SLURM_JOB_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NTASKS": str(nodes * per_node),
           "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_NODELIST": "127.0.0.1", "SLURM_SUBMIT_DIR": os.getcwd(),
           "FAKE_SLURM_KEY": key, "FAKE_SLURM_ARRAY_JOB": str(job_id), "FAKE_SLURM_ARRAY_TASK": "" if idx is None else str(idx)}
    if idx is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(idx))
    restarts = 0
    while True:
        if restarts:
            env["SLURM_RESTART_COUNT"] = str(restarts)
        _set_state(key, "RUNNING", restarts=restarts)
        out = _expand(params.get("output", f"slurm-{job_id}.out"), job_id, idx, 0)
        err = _expand(params.get("error", params.get("output", f"slurm-{job_id}.out")), job_id, idx, 0)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as o, open(err, "ab") as e:
            proc = subprocess.Popen(["bash", str(script)], env=env, stdout=o, stderr=e, start_new_session=True)
            requeued = cancelled = False
            while proc.poll() is None:
                if _job_file(key, "requeue").exists() or _job_file(key, "cancel").exists():
                    requeued = _job_file(key, "requeue").exists()
                    cancelled = not requeued
                    _end(proc)
                    break
                time.sleep(0.1)
            requeued = requeued or _job_file(key, "requeue").exists()
        _job_file(key, "requeue").unlink(missing_ok=True)
        _job_file(key, "pids").unlink(missing_ok=True)
        if cancelled:
            _set_state(key, "CANCELLED")
            return
        if requeued:
            restarts += 1
            _set_state(key, "PENDING", restarts=restarts)
            continue
        _set_state(key, "COMPLETED" if proc.returncode == 0 else "FAILED", exit_code=proc.returncode)
        return


def _end(proc: subprocess.Popen) -> None:
    """As slurmctld ends a job: SIGTERM to every process of the job, SIGKILL to whatever is left after
    KillWait (3 s here), whether or not the batch shell itself has exited. It acts a moment after the
    request, as the real one does after ``scontrol requeue`` has returned."""
    time.sleep(1.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the job's process group?
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.1)
        else:
            continue
        break
    proc.wait()


def _expand(pattern: str, job_id: int, idx, task: int) -> str:
    return (pattern.replace("%A", str(job_id)).replace("%a", "" if idx is None else str(idx))
            .replace("%j", str(job_id if idx is None else f"{job_id}_{idx}")).replace("%t", str(task)))


# -- srun ---------------------------------------------------------------------------------------------


def srun(args: list[str]) -> int:
    output = error = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        opt = args[i]
        if opt in ("--output", "--error"):
            output, error = (args[i + 1], error) if opt == "--output" else (output, args[i + 1])
            i += 2
            continue
        if opt.startswith("--output="):
            output = opt.split("=", 1)[1]
        elif opt.startswith("--error="):
            error = opt.split("=", 1)[1]
        i += 1
    command = args[i:]
    env = os.environ
    ntasks, per_node = int(env["SLURM_NTASKS"]), int(env["SLURM_NTASKS_PER_NODE"])
    job = int(env["FAKE_SLURM_ARRAY_JOB"])
    idx = int(env["FAKE_SLURM_ARRAY_TASK"]) if env.get("FAKE_SLURM_ARRAY_TASK") else None
    with socket.socket() as s:  # one rendezvous port per step, as a fresh allocation would have
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for t in range(ntasks):
        task_env = {**env, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t % per_node), "SLURM_NODEID": str(t // per_node),
                    "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "MASTER_PORT": str(port)}
        out = open(_expand(output, job, idx, t), "ab") if output else None
        err = open(_expand(error, job, idx, t), "ab") if error else out
        procs.append(subprocess.Popen(command, env=task_env, stdout=out, stderr=err))
    _job_file(env["FAKE_SLURM_KEY"], "pids").write_text("".join(f"{p.pid}\n" for p in procs))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


# -- sacct, squeue, scancel, scontrol -------------------------------------------------------------------


def sacct(args: list[str]) -> int:
    jobs = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        for key in _keys(job):
            print(f"{key}|{json.loads(_job_file(key).read_text())['state']}|127.0.0.1")
    return 0


def squeue(args: list[str]) -> int:
    print("JOBID STATE")
    for path in sorted((state_dir() / "jobs").glob("*.json")):
        state = json.loads(path.read_text())["state"]
        if state in ("PENDING", "RUNNING"):
            print(f"{path.stem} {state}")
    return 0


def scancel(args: list[str]) -> int:
    sig = None
    jobs = []
    i = 0
    while i < len(args):
        if args[i] == "--signal":
            sig, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--signal="):
            sig = args[i].split("=", 1)[1]
        elif not args[i].startswith("-"):
            jobs.append(args[i])
        i += 1
    for job in jobs:
        for key in _keys(job):
            if sig is None:
                _job_file(key, "cancel").write_text("")
                continue
            signum = getattr(signal, sig if sig.upper().startswith("SIG") else f"SIG{sig.upper()}")
            pids = _job_file(key, "pids")
            for pid in (pids.read_text().split() if pids.exists() else []):
                try:
                    os.kill(int(pid), signum)
                except ProcessLookupError:
                    pass
    return 0


def scontrol(args: list[str]) -> int:
    # An RPC to the controller: the real command returns before the job it requeues is signalled, so
    # it leaves the job's process group rather than die with it.
    os.setsid()
    if args[:1] != ["requeue"]:
        print(f"fake scontrol: only 'requeue' is implemented, got {args}", file=sys.stderr)
        return 1
    for job in args[1:]:
        for key in _keys(job):
            _job_file(key, "requeue").write_text("")
    return 0


def install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {name} "$@"\n')
        exe.chmod(0o755)
    return bin_dir


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "install":
        print(install(Path(rest[0])))
    elif command == "_run":
        run(*rest)
    else:
        sys.exit(globals()[command](rest))
