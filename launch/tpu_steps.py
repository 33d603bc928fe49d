"""The steps of each TPU VM launcher command: pure functions from a Job to a list of Steps (launch/tpu_job.py).

A Step is either a command (argv, run without a shell on this machine: gcloud, or a local
build command) or a TPU API request (google-cloud-tpu library). `--dry-run` prints
`Step.render()` for each step; execution (launch/tpu_vm.py) runs the very
same steps, so the dry run is exactly what would run. Nothing here calls anything.
"""

from __future__ import annotations

import shlex

from launch.tpu_job import Job, Step

# Layout on every worker. `$HOME` (not `~`) so it expands inside the generated scripts.
REMOTE_DIR = "$HOME/trainer"  # the code (wheel + configs, or the git clone)
LOG_DIR = "$HOME/trainer-logs"  # outside REMOTE_DIR: survives a fresh clone
LOG = f"{LOG_DIR}/train.log"
PID = f"{LOG_DIR}/train.pid"  # pid of the detached session leader (= its process group)
RC = f"{LOG_DIR}/train.rc"  # exit code of the trainer, written when it ends


# ---------------------------------------------------------------- cloud resource steps


def _gcloud(job: Job, verb: str, *flags: str, queued: bool | None = None) -> tuple[str, ...]:
    group = "queued-resources" if (job.queued if queued is None else queued) else "tpu-vm"
    return (
        "gcloud",
        "compute",
        "tpus",
        group,
        verb,
        job.name,
        f"--zone={job.zone}",
        f"--project={job.project}",
        *flags,
    )


def _node_name(job: Job) -> str:
    return f"{job.parent}/nodes/{job.name}"


def _queued_name(job: Job) -> str:
    return f"{job.parent}/queuedResources/{job.name}"


def describe_step(job: Job, note: str = "", role: str = "describe") -> Step:
    """Read the state of the TPU VM (or queued resource): absent, READY/ACTIVE, PREEMPTED..."""
    if job.api == "gcloud":
        fmt = "--format=value(state.state)" if job.queued else "--format=value(state)"
        return Step(role, argv=_gcloud(job, "describe", fmt), note=note)
    if job.queued:
        from google.cloud import tpu_v2alpha1 as v

        return Step(
            role,
            api="tpu_v2alpha1.TpuClient.get_queued_resource",
            request=v.GetQueuedResourceRequest(name=_queued_name(job)),
            note=note,
        )
    from google.cloud import tpu_v2

    return Step(role, api="tpu_v2.TpuClient.get_node", request=tpu_v2.GetNodeRequest(name=_node_name(job)), note=note)


def create_step(job: Job, note: str = "") -> Step:
    """Create the TPU VM, or a queued resource holding one node of the same name."""
    acc, rt = job.accelerator.name, job.runtime
    if job.api == "gcloud":
        tier = ("--spot",) if job.spot else ("--reserved",) if job.reserved else ()
        if job.queued:
            argv = _gcloud(
                job, "create", f"--node-id={job.name}", f"--accelerator-type={acc}", f"--runtime-version={rt}", *tier
            )
        else:
            argv = _gcloud(job, "create", f"--accelerator-type={acc}", f"--version={rt}", *tier)
        return Step("create", argv=argv, note=note)
    if job.queued:
        from google.cloud import tpu_v2alpha1 as v

        qr = v.QueuedResource(
            tpu=v.QueuedResource.Tpu(
                node_spec=[
                    v.QueuedResource.Tpu.NodeSpec(
                        parent=job.parent, node_id=job.name, node=v.Node(accelerator_type=acc, runtime_version=rt)
                    )
                ]
            )
        )
        if job.spot:
            qr.spot = v.QueuedResource.Spot()
        if job.reserved:
            qr.guaranteed = v.QueuedResource.Guaranteed(reserved=True)
        req = v.CreateQueuedResourceRequest(parent=job.parent, queued_resource_id=job.name, queued_resource=qr)
        return Step("create", api="tpu_v2alpha1.TpuClient.create_queued_resource", request=req, note=note)
    from google.cloud import tpu_v2

    node = tpu_v2.Node(accelerator_type=acc, runtime_version=rt)
    if job.spot or job.reserved:
        node.scheduling_config = tpu_v2.SchedulingConfig(spot=job.spot, reserved=job.reserved)
    req = tpu_v2.CreateNodeRequest(parent=job.parent, node_id=job.name, node=node)
    return Step("create", api="tpu_v2.TpuClient.create_node", request=req, note=note)


def delete_step(job: Job, role: str = "delete", note: str = "") -> Step:
    """Delete the TPU VM, or the queued resource together with its node (force)."""
    if job.api == "gcloud":
        flags = ("--force", "--quiet") if job.queued else ("--quiet",)
        return Step(role, argv=_gcloud(job, "delete", *flags), note=note)
    if job.queued:
        from google.cloud import tpu_v2alpha1 as v

        return Step(
            role,
            api="tpu_v2alpha1.TpuClient.delete_queued_resource",
            request=v.DeleteQueuedResourceRequest(name=_queued_name(job), force=True),
            note=note,
        )
    from google.cloud import tpu_v2

    return Step(
        role, api="tpu_v2.TpuClient.delete_node", request=tpu_v2.DeleteNodeRequest(name=_node_name(job)), note=note
    )


def show_steps(job: Job) -> list[Step]:
    """Full description of the resource(s), for `status`."""
    if job.api == "gcloud":
        steps = [Step("show", argv=_gcloud(job, "describe"))]
        if job.queued:
            steps.append(Step("show", argv=_gcloud(job, "describe", queued=False)))
        return steps
    steps = [describe_step(job, role="show")]
    if job.queued:
        from dataclasses import replace

        steps.append(describe_step(replace(job, queued=False), role="show"))
    return steps


# ---------------------------------------------------------------- worker steps (gcloud ssh/scp)


def ssh_step(job: Job, role: str, script: str, worker: str = "all", note: str = "") -> Step:
    """Run a one-line bash script on the workers through `gcloud compute tpus tpu-vm ssh`."""
    argv = (
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        job.name,
        f"--zone={job.zone}",
        f"--project={job.project}",
        f"--worker={worker}",
        "--quiet",
        f"--command={script}",
    )
    return Step(role, argv=argv, note=note)


def scp_step(job: Job, role: str, sources: tuple[str, ...], dest: str, recurse: bool = False) -> Step:
    """Copy local files to every worker (dest is relative to the remote home)."""
    argv = (
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        *sources,
        f"{job.name}:{dest}",
        f"--zone={job.zone}",
        f"--project={job.project}",
        "--worker=all",
        "--quiet",
        *(("--recurse",) if recurse else ()),
    )
    return Step(role, argv=argv)


def ship_steps(job: Job) -> list[Step]:
    """Put the code and the config on every worker (a wheel of this checkout, or a git ref)."""
    q = shlex.quote
    cfg_dir = q(f"trainer/{job.remote_config}".rsplit("/", 1)[0])
    if job.ship == "git":
        url, ref = q(job.git_url or ""), job.git_ref or "HEAD"
        script = "; ".join(
            [
                "set -e",
                f"if [ -d {REMOTE_DIR}/.git ]; then git -C {REMOTE_DIR} remote set-url origin {url}; "
                f"git -C {REMOTE_DIR} fetch --quiet --tags origin '+refs/heads/*:refs/remotes/origin/*'; "
                f"else rm -rf {REMOTE_DIR}; git clone --quiet {url} {REMOTE_DIR}; fi",
                f"git -C {REMOTE_DIR} checkout --quiet --force --detach "
                f'"$(git -C {REMOTE_DIR} rev-parse --verify --quiet {q("origin/" + ref)} || echo {q(ref)})"',
                f"mkdir -p $HOME/{cfg_dir}",
            ]
        )
        return [
            ssh_step(job, "ship", script, note=f"clone {job.git_url} at {ref} on every worker"),
            scp_step(job, "ship", (job.config,), f"trainer/{job.remote_config}"),
        ]
    stage = f"{job.stage_dir}/trainer"
    steps = [
        Step("stage", argv=("rm", "-rf", job.stage_dir)),
        Step("stage", argv=("mkdir", "-p", f"{stage}/configs")),
        Step(
            "stage",
            argv=(
                job.python,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--quiet",
                "--wheel-dir",
                f"{stage}/dist",
                job.repo_root,
            ),
        ),
        Step("stage", argv=("cp", "-R", f"{job.repo_root}/configs/.", f"{stage}/configs/")),
    ]
    if job.copy_config:
        dest = f"{stage}/{job.remote_config}"
        if dest.rsplit("/", 1)[0] != f"{stage}/configs":
            steps.append(Step("stage", argv=("mkdir", "-p", dest.rsplit("/", 1)[0])))
        steps.append(Step("stage", argv=("cp", job.config, dest)))
    steps += [
        ssh_step(job, "ship", f"mkdir -p {REMOTE_DIR} && rm -rf {REMOTE_DIR}/dist"),
        scp_step(job, "ship", (stage,), ".", recurse=True),
    ]
    return steps


def install_step(job: Job) -> Step:
    """Install the package with the `tpu` extra on every worker."""
    if job.ship == "git":
        script = f"set -e; cd {REMOTE_DIR}; python3 -m pip install --progress-bar off -e '.[tpu]'"
    else:
        script = (
            f"set -e; W=$(ls {REMOTE_DIR}/dist/*.whl | head -n 1); "
            'python3 -m pip install --quiet --force-reinstall --no-deps "$W"; '
            'python3 -m pip install --progress-bar off "$W[tpu]"'
        )
    return ssh_step(job, "install", script)


def trainer_argv(job: Job) -> list[str]:
    """The training command every worker runs (jax.distributed auto-detects TPU VM hosts)."""
    return ["python3", "-m", "trainer.main", job.remote_config, *job.overrides]


def _log_copy(job: Job) -> str | None:
    if not (job.run_dir or "").startswith("gs://"):
        return None
    dest = shlex.quote(job.run_dir.rstrip("/") + "/logs/") + '"train-$(hostname)-$LAUNCH_T.log"'
    return f"gcloud storage cp --quiet {LOG} {dest} >/dev/null 2>&1"


def job_script(job: Job) -> str:
    """The detached per-worker script: run the trainer, record its exit code, copy the log."""
    copy = _log_copy(job)
    parts = ["export PYTHONUNBUFFERED=1", f"cd {REMOTE_DIR}"]
    if copy:
        # The trap also ends the loop's `sleep`, so nothing outlives the trainer in its process group.
        parts.append(
            f"( trap 'kill $! 2>/dev/null; exit 0' TERM; while true; do sleep 300 & wait $!; {copy}; done ) & S=$!"
        )
    parts += [shlex.join(trainer_argv(job)), "rc=$?", f"echo $rc > {RC}"]
    if copy:
        parts += ["kill $S", copy]
    return "; ".join(parts + ["exit $rc"])


def start_step(job: Job) -> Step:
    """Start the trainer on all workers at once, detached (setsid nohup), log to LOG."""
    pid = f"$(cat {PID})"
    script = "; ".join(
        [
            f"mkdir -p {LOG_DIR}",
            f"if [ -f {PID} ] && kill -0 -- -{pid} 2>/dev/null; then echo stopping the previous run; "
            f"kill -TERM -- -{pid}; sleep 10; kill -KILL -- -{pid} 2>/dev/null; fi",
            f"rm -f {RC}; if [ -f {LOG} ]; then mv {LOG} {LOG}.prev; fi",
            f"LAUNCH_T=$(date +%Y%m%d-%H%M%S) setsid nohup bash -c {shlex.quote(job_script(job))} "
            f"> {LOG} 2>&1 < /dev/null & echo $! > {PID}",
            f'echo "$(hostname): trainer started, log {LOG}"',
        ]
    )
    return ssh_step(job, "start", script, note=f"{job.accelerator.hosts} worker(s): " + shlex.join(trainer_argv(job)))


def stream_step(job: Job, worker: str = "0") -> Step:
    """Follow a worker's log until its trainer exits (Ctrl-C only stops the streaming)."""
    script = (
        f"if [ -f {PID} ]; then tail --pid=$(cat {PID}) -n +1 -F {LOG} 2>/dev/null; "
        f"else echo no run started on this worker; fi"
    )
    return ssh_step(job, "stream", script, worker=worker)


def result_step(job: Job) -> Step:
    """Print worker 0's trainer exit code, or `running`, or `unknown`."""
    script = (
        f"if [ -f {RC} ]; then cat {RC}; elif [ -f {PID} ] && kill -0 $(cat {PID}) 2>/dev/null; "
        f"then echo running; else echo unknown; fi"
    )
    note = "exit code of worker 0"
    if job.retries:
        note += (
            f"; if the TPU was preempted ({'/'.join(job.dead_states)} or gone), "
            f"repeat from the top, up to {job.retries} time(s)"
        )
    return ssh_step(job, "result", script, worker="0", note=note)


def stop_step(job: Job, grace_s: int = 60) -> Step:
    """Stop the trainer on every worker: SIGTERM to its process group, SIGKILL after grace_s."""
    script = (
        f"H=$(hostname); if [ -f {PID} ] && kill -0 -- -$(cat {PID}) 2>/dev/null; then P=$(cat {PID}); "
        f"kill -TERM -- -$P; for i in $(seq {grace_s}); do kill -0 -- -$P 2>/dev/null || break; sleep 1; done; "
        f'kill -KILL -- -$P 2>/dev/null; echo "$H: stopped"; else echo "$H: not running"; fi'
    )
    return ssh_step(job, "stop", script)


def job_status_step(job: Job) -> Step:
    """Report per worker whether the trainer runs, finished (with its code) or is absent."""
    script = (
        f'H=$(hostname); if [ -f {RC} ]; then echo "$H: finished, exit code $(cat {RC})"; '
        f'elif [ -f {PID} ] && kill -0 $(cat {PID}) 2>/dev/null; then echo "$H: running"; '
        f'else echo "$H: no trainer running"; fi'
    )
    return ssh_step(job, "job_status", script)


# ---------------------------------------------------------------- plans


def up_steps(job: Job) -> list[Step]:
    """Create-or-reuse, wait, ship, install, start, stream, result: the whole launch."""
    kind = "queued resource" if job.queued else "TPU VM"
    dead = "/".join(job.dead_states)
    return [
        describe_step(job, note=f"absent: create; {job.ready_state}: reuse; {dead}: delete and re-create"),
        delete_step(job, role="delete_dead", note=f"only if the state is {dead}"),
        create_step(job, note=f"only if no {kind} named {job.name} exists"),
        describe_step(job, role="wait", note=f"repeat every {job.poll_s}s until the state is {job.ready_state}"),
        *ship_steps(job),
        install_step(job),
        start_step(job),
        stream_step(job),
        result_step(job),
    ]


def status_steps(job: Job) -> list[Step]:
    """Describe the resource(s), then ask every worker about the trainer."""
    return [*show_steps(job), job_status_step(job)]


def logs_steps(job: Job) -> list[Step]:
    """Stream one worker's log (re-attach)."""
    return [stream_step(job, worker=job.worker)]


def stop_steps(job: Job) -> list[Step]:
    """Stop the trainer on all workers, keep the TPU VM."""
    return [stop_step(job)]


def delete_steps(job: Job) -> list[Step]:
    """Delete the TPU VM (or queued resource and its node)."""
    return [delete_step(job)]


COMMANDS = {"up": up_steps, "status": status_steps, "logs": logs_steps, "stop": stop_steps, "delete": delete_steps}
