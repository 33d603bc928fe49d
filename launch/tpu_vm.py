"""Launch the trainer on a Cloud TPU VM slice, and manage it.

    python launch/tpu_vm.py --zone us-central2-b --accelerator v4-32 --spot --retries 3 \\
        --run-dir gs://BUCKET/runs/303m -- configs/303m.yml train.steps=1000
    python launch/tpu_vm.py {status|logs|stop|delete} --zone us-central2-b --name trainer-303m

`up` (the default action) creates the TPU VM or queued resource unless one of that name
exists (it is reused), waits until it is READY/ACTIVE, ships this checkout (a wheel, or a
git ref cloned on the workers), installs `.[tpu]` on every worker, starts
`python3 -m trainer.main CONFIG overrides` detached on all workers and streams worker 0's
log. With `--retries N` a preempted TPU is deleted, re-created and the same job restarted
(the trainer resumes from the latest checkpoint in run.dir). `--dry-run` prints the plan:
the steps are built by pure functions in launch/tpu_steps.py and run as printed here.
TPU API calls go through `gcloud` when it is on PATH, else through the google-cloud-tpu
library (`--api`); ssh/scp to the workers always needs gcloud.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `launch` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.preflight import preflight  # noqa: E402
from launch.tpu_catalog import LaunchError, check_zone, parse_accelerator  # noqa: E402
from launch.tpu_job import Job, Step  # noqa: E402
from launch.tpu_runner import Runner, StepFailed  # noqa: E402
from launch.tpu_steps import COMMANDS  # noqa: E402
from trainer.cli_args import ArgumentParser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACTIONS = ("up", "status", "logs", "stop", "delete")
PLACEHOLDER_PROJECT = "YOUR_PROJECT"


def build_parser() -> argparse.ArgumentParser:
    """The option parser (the part of the command line before `--`)."""
    p = ArgumentParser(
        prog="launch/tpu_vm.py",
        usage="%(prog)s [up|status|logs|stop|delete] --zone ZONE [options] -- CONFIG [section.key=value ...]",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-east5-a (v5p/v6e/v5e)")
    p.add_argument("--project", help="default: $GOOGLE_CLOUD_PROJECT, $CLOUDSDK_CORE_PROJECT or gcloud config")
    p.add_argument("--name", help="TPU VM name (default: trainer-<config name>)")
    p.add_argument("--accelerator", default="v4-8", help="v4-8..v4-4096, v5litepod-N (v5e-N), v5p-N, v6e-N")
    p.add_argument("--version", help="TPU VM runtime version (default: the one for the generation)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="spot capacity (cheap, preemptible)")
    tier.add_argument("--reserved", action="store_true", help="use your reservation")
    p.add_argument("--queued", action="store_true", help="go through a queued resource")
    p.add_argument("--retries", type=int, default=0, help="re-create and restart after preemption N times")
    p.add_argument("--run-dir", help="gs:// run folder: passed as run.dir, logs are copied there")
    p.add_argument(
        "--ship",
        choices=("wheel", "git"),
        default="wheel",
        help="wheel: build this checkout and scp it; git: clone --git-ref on the workers",
    )
    p.add_argument("--git-url", help="--ship git: repository URL (default: this checkout's origin)")
    p.add_argument("--git-ref", help="--ship git: branch, tag or commit (default: this checkout's HEAD)")
    p.add_argument(
        "--api",
        choices=("auto", "gcloud", "library"),
        default="auto",
        help="TPU API calls through the gcloud CLI or the google-cloud-tpu library (auto: gcloud if on PATH)",
    )
    p.add_argument("--worker", default="0", help="logs: which worker's log to stream")
    p.add_argument("--skip-zone-check", action="store_true", help="do not check the zone table")
    p.add_argument("--poll-seconds", type=int, default=30, help="state polling interval")
    p.add_argument(
        "--wait-minutes", type=float, help="give up waiting for READY/ACTIVE after this (default 60, queued: 1440)"
    )
    p.add_argument("--dry-run", action="store_true", help="print every command / API request and exit")
    p.add_argument(
        "--skip-fit-check",
        action="store_true",
        help="up: do not compile the train step for the accelerator before creating it",
    )
    return p


# ---------------------------------------------------------------- reading the local setup


def default_project(env: dict[str, str] | None = None) -> str | None:
    """Project from the environment or the active gcloud configuration (files only, no gcloud call)."""
    env = dict(os.environ if env is None else env)
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        if env.get(var):
            return env[var]
    cfg_dir = Path(env.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    try:
        active = (cfg_dir / "active_config").read_text().strip() or "default"
    except OSError:
        active = "default"
    ini = configparser.ConfigParser()
    try:
        ini.read(cfg_dir / "configurations" / f"config_{active}")
    except configparser.Error:
        return None
    return ini.get("core", "project", fallback=None) or None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def _config_paths(config: str) -> tuple[str, bool]:
    """Where the config lives on the workers (relative to the code dir) and whether to copy it."""
    path = Path(config).resolve()
    try:
        rel = path.relative_to(REPO).as_posix()
    except ValueError:
        return f"configs/{path.name}", True
    return rel, not rel.startswith("configs/")


def make_job(action: str, ns: argparse.Namespace, rest: list[str], dry_run: bool) -> tuple[Job, list[str]]:
    """Validate the command line into a Job; return it with warnings. Raises LaunchError."""
    warnings: list[str] = []
    config, overrides = (rest[0], rest[1:]) if rest else ("", [])
    acc = parse_accelerator(ns.accelerator)
    if action == "up":
        if not config:
            raise LaunchError("missing CONFIG: launch/tpu_vm.py --zone ZONE [options] -- CONFIG [overrides]")
        if not Path(config).is_file():
            raise LaunchError(f"config file not found: {config}")
        if not ns.skip_zone_check and (w := check_zone(ns.zone, acc)):
            warnings.append(w)
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise LaunchError(f"overrides must look like section.key=value, got {bad[0]!r}")
    name = ns.name or (
        f"trainer-{re.sub(r'[^a-z0-9]+', '-', Path(config).stem.lower()).strip('-')}" if config else None
    )
    if not name:
        raise LaunchError("give --name (or the CONFIG after --) to say which TPU VM")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,61}[a-z0-9]", name):
        raise LaunchError(f"invalid TPU name {name!r}: lowercase letters, digits and '-', starting with a letter")
    project = ns.project or default_project()
    if not project or project == PLACEHOLDER_PROJECT:  # refused in --dry-run too: a plan for no project is no plan
        raise LaunchError(
            f"{'no project' if not project else f'--project {project} is the example placeholder'}: "
            "pass --project, set GOOGLE_CLOUD_PROJECT or `gcloud config set project`"
        )
    run_dir = ns.run_dir
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("run.dir=")]
    if run_dir and given and given[-1] != run_dir:
        raise LaunchError(f"run.dir given twice: --run-dir {run_dir} and run.dir={given[-1]}")
    if run_dir and not given:
        overrides.append(f"run.dir={run_dir}")
    run_dir = run_dir or (given[-1] if given else None)
    if action == "up" and ns.retries and not (run_dir or "").startswith("gs://"):
        warnings.append("warning: --retries resumes from checkpoints only if run.dir is on gs:// (--run-dir)")
    git_url, git_ref = ns.git_url, ns.git_ref
    if action == "up" and ns.ship == "git":
        git_url = git_url or _git("remote", "get-url", "origin")
        if not git_url:
            raise LaunchError("--ship git needs --git-url (this checkout has no 'origin' remote)")
        if not git_ref:
            git_ref = _git("rev-parse", "HEAD")
            if not git_ref:
                raise LaunchError("--ship git needs --git-ref (cannot read this checkout's HEAD)")
            warnings.append(
                f"warning: shipping commit {git_ref[:12]}: it must be pushed; uncommitted changes "
                "are not shipped (the config file is copied as it is here)"
            )
    api = ns.api if ns.api != "auto" else ("gcloud" if shutil.which("gcloud") else "library")
    remote_config, copy_config = _config_paths(config) if config else ("", False)
    job = Job(
        name=name,
        zone=ns.zone,
        project=project,
        accelerator=acc,
        runtime=ns.version or acc.runtime,
        spot=ns.spot,
        reserved=ns.reserved,
        queued=ns.queued,
        api=api,
        ship=ns.ship,
        config=config,
        remote_config=remote_config,
        copy_config=copy_config,
        overrides=tuple(overrides),
        run_dir=run_dir,
        repo_root=str(REPO),
        stage_dir=str(Path(tempfile.gettempdir()) / f"trainer-launch-{name}"),
        python=sys.executable,
        git_url=git_url,
        git_ref=git_ref,
        retries=max(0, ns.retries),
        poll_s=max(0, ns.poll_seconds),
        worker=ns.worker,
    )
    return job, warnings


def execute_up(job: Job, plan: list[Step], runner: Runner) -> int:
    """Run the `up` plan; on preemption (and retries left) run it again from the top."""
    describe = plan[0]
    attempt = 0
    while True:
        try:
            return _up_once(job, plan, runner)
        except StepFailed as e:
            if not runner.is_dead(describe):
                raise
            if attempt >= job.retries:
                raise StepFailed(f"the TPU was preempted or deleted and no retries are left ({e})") from e
            attempt += 1
            print(
                f"TPU preempted or gone: re-creating and restarting (retry {attempt}/{job.retries})",
                file=sys.stderr,
                flush=True,
            )


def _up_once(job: Job, plan: list[Step], runner: Runner) -> int:
    state: str | None = None
    by_role = {s.role: s for s in plan}
    for step in plan:
        if step.role == "describe":
            state = runner.state(step)
            while state == "DELETING":
                time.sleep(max(job.poll_s, 0.1))
                state = runner.state(step)
            if state in ("STOPPED", "STOPPING"):
                raise LaunchError(f"{job.name} is {state}: start it (gcloud compute tpus tpu-vm start) or delete it")
            print(f"{job.name}: {state or 'absent'}", file=sys.stderr, flush=True)
        elif step.role == "delete_dead":
            if state in job.dead_states:
                runner.call(step)
                state = None
        elif step.role == "create":
            if state is None:
                runner.call(step)
            else:
                print(f"reusing {job.name}", file=sys.stderr, flush=True)
        elif step.role == "wait":
            runner.wait(step, job.ready_state)
        elif step.role == "stream":
            subprocess.run(list(step.argv))
        elif step.role == "result":
            while True:
                if runner.is_dead(by_role["describe"]):
                    raise StepFailed(f"{job.name} was preempted")
                out = runner.capture(step)
                if out == "running":  # the stream broke (network): attach again
                    subprocess.run(list(by_role["stream"].argv))
                    continue
                if out is not None and out.isdigit():
                    print(f"trainer exited with code {out} on worker 0", file=sys.stderr)
                    return int(out)
                raise StepFailed(f"could not read the trainer's exit code on worker 0 (got {out!r})")
        else:
            runner.call(step)
    return 0


def hints(job: Job) -> str:
    """How to re-attach, check, stop and delete: printed when `up` ends or is interrupted."""
    flags = [
        f"--zone={job.zone}",
        f"--project={job.project}",
        f"--name={job.name}",
        *(["--queued"] if job.queued else []),
        *(["--api=library"] if job.api == "library" else []),
    ]
    cmd = {a: shlex.join(["python", "launch/tpu_vm.py", a, *flags]) for a in ("logs", "status", "stop", "delete")}
    return "\n".join(
        [
            f"The trainer keeps running on {job.name} in the background. From this checkout:",
            f"  re-attach:  {cmd['logs']}",
            f"  status:     {cmd['status']}",
            f"  stop job:   {cmd['stop']}",
            f"  delete VM:  {cmd['delete']}",
        ]
    )


def run(action: str, job: Job, dry_run: bool, wait_s: float, fit_check: bool = True) -> int:
    """Build the plan for `action`; check the config (`up`: launch/preflight.py); print the plan (dry run) or
    execute it."""
    plan = COMMANDS[action](job)
    if job.api == "library" and any(s.argv[:1] == ("gcloud",) for s in plan) and not shutil.which("gcloud"):
        msg = (
            "gcloud CLI not found on PATH: TPU API calls go through the google-cloud-tpu library, "
            "but ssh/scp to the workers needs gcloud (install the Google Cloud SDK)"
        )
        if not dry_run:
            raise LaunchError(msg)
        print(f"warning: {msg}", file=sys.stderr)
    if action == "up":  # before anything is created: the checks the workers would run, and the fit
        for note in preflight(job, dry_run, fit=fit_check):
            print(note, file=sys.stderr, flush=True)
    if dry_run:
        for step in plan:
            print(step.render())
        return 0
    runner = Runner(job, wait_s)
    if action == "up":
        print(
            f"launching {job.remote_config} on {job.name} ({job.accelerator.name}, "
            f"{job.accelerator.hosts} worker(s)) in {job.zone}",
            file=sys.stderr,
            flush=True,
        )
        try:
            return execute_up(job, plan, runner)
        except KeyboardInterrupt:
            print("\ninterrupted: the job (if started) keeps running", file=sys.stderr)
            return 130
        finally:
            print(hints(job), file=sys.stderr)
    for step in plan:
        if step.role == "show" and step.argv:
            runner.call(step)
        elif step.role == "show":
            print(runner._client(step.api)(request=step.request))
        elif step.role == "stream":
            try:
                subprocess.run(list(step.argv))
            except KeyboardInterrupt:
                return 130
        else:
            runner.call(step)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: `[ACTION] [options] -- CONFIG [overrides]`; errors: one line, exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts, rest = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    action = opts.pop(0) if opts and opts[0] in ACTIONS else "up"
    ns = build_parser().parse_args(opts)
    try:
        job, warnings = make_job(action, ns, rest, ns.dry_run)
        for w in warnings:
            print(w, file=sys.stderr)
        wait_min = ns.wait_minutes if ns.wait_minutes is not None else (1440 if job.queued else 60)
        return run(action, job, ns.dry_run, wait_min * 60, fit_check=not ns.skip_fit_check)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `--dry-run | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
