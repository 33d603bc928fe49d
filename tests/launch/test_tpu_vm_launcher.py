"""Offline tests of launch/tpu_vm.py: dry-run plans, refusals, the worker scripts, and the
executor against a fake `gcloud` (nothing here talks to Google Cloud)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launch import tpu_job, tpu_steps  # noqa: E402
from launch.tpu_catalog import LaunchError, check_zone, parse_accelerator  # noqa: E402

SCRIPT = REPO / "launch" / "tpu_vm.py"
PY = sys.executable


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    """No project from the environment or a gcloud config; an empty gcloud config dir."""
    e = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")}
    (tmp_path / "gcloud-config").mkdir()
    e["CLOUDSDK_CONFIG"] = str(tmp_path / "gcloud-config")
    return e


@pytest.fixture()
def cfg(tmp_path: Path) -> str:
    path = tmp_path / "303m.yml"
    path.write_text("model: {}\n")
    return str(path)


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def plan_lines(args: list[str], env: dict[str, str]) -> list[str]:
    r = cli(
        [*args[: args.index("--")], "--dry-run", *args[args.index("--") :]] if "--" in args else [*args, "--dry-run"],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout.splitlines()


def argv_of(line: str) -> list[str]:
    """The command of a dry-run line, without its trailing `# note`."""
    return shlex.split(line, comments=True)


def command_of(argv: list[str]) -> str:
    return next(a for a in argv if a.startswith("--command=")).split("=", 1)[1]


UP = ["--zone", "us-central2-b", "--project", "proj"]


def test_accelerator_catalog() -> None:
    assert parse_accelerator("v4-32").hosts == 4
    assert parse_accelerator("v4-8").hosts == 1
    v5e = parse_accelerator("v5e-8")
    assert (v5e.name, v5e.runtime, v5e.hosts) == ("v5litepod-8", "v2-alpha-tpuv5-lite", 1)
    assert parse_accelerator("v6e-16").hosts == 4 and parse_accelerator("v6e-16").runtime == "v2-alpha-tpuv6e"
    assert parse_accelerator("v5p-128").runtime == "v2-alpha-tpuv5"
    with pytest.raises(LaunchError, match="'v4-16'"):
        parse_accelerator("v4-12")
    with pytest.raises(LaunchError, match="us-east5-a"):
        check_zone("us-central2-b", parse_accelerator("v5p-8"))
    assert check_zone("mars-north1-a", parse_accelerator("v4-8")).startswith("warning:")
    assert check_zone("us-east1-d", parse_accelerator("v6e-8")) is None


def test_dry_run_v4_8_spot_wheel(env: dict[str, str], cfg: str) -> None:
    lines = plan_lines([*UP, "--spot", "--run-dir", "gs://b/runs/303m", "--", cfg, "train.steps=1000"], env)
    cmds = [argv_of(line) for line in lines]
    base = ["--zone=us-central2-b", "--project=proj"]
    assert cmds[0] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "describe",
        "trainer-303m",
        *base,
        "--format=value(state)",
    ]
    assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "trainer-303m", *base, "--quiet"]
    assert "PREEMPTED" in lines[1]
    assert cmds[2] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "trainer-303m",
        *base,
        "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base",
        "--spot",
    ]
    assert cmds[3] == cmds[0] and "until the state is READY" in lines[3]
    stage = [c for c in cmds if c[0] != "gcloud"]  # local build of the wheel + configs
    assert stage[0][:2] == ["rm", "-rf"] and stage[0][2].endswith("trainer-launch-trainer-303m")
    assert stage[2][1:4] == ["-m", "pip", "wheel"] and stage[2][-1] == str(REPO)
    assert stage[3][:2] == ["cp", "-R"] and stage[-1] == ["cp", cfg, f"{stage[0][2]}/trainer/configs/303m.yml"]
    remote = [c for c in cmds[4:] if c[0] == "gcloud"]
    verbs = [c[4] for c in remote]
    assert verbs == ["ssh", "scp", "ssh", "ssh", "ssh", "ssh"]
    prep, scp, install, start, stream, result = remote
    assert scp[5:7] == [f"{stage[0][2]}/trainer", "trainer-303m:."] and "--recurse" in scp
    for c in (prep, scp, install, start):
        assert "--worker=all" in c
    assert "rm -rf $HOME/trainer/dist" in command_of(prep)
    assert '"$W[tpu]"' in command_of(install) and "pip install" in command_of(install)
    script = command_of(start)
    assert "setsid nohup bash -c" in script and "> $HOME/trainer-logs/train.log" in script
    assert "python3 -m trainer.main configs/303m.yml train.steps=1000 run.dir=gs://b/runs/303m" in script
    assert "gcloud storage cp" in script and "gs://b/runs/303m/logs/" in script
    assert "--worker=0" in stream and "tail --pid" in command_of(stream)
    assert "--worker=0" in result and "train.rc" in command_of(result)
    assert len(lines) == len(cmds) == 4 + len(stage) + 6


def test_dry_run_v4_32_git(env: dict[str, str], cfg: str) -> None:
    lines = plan_lines(
        [
            *UP,
            "--accelerator",
            "v4-32",
            "--ship",
            "git",
            "--git-url",
            "https://x/repo.git",
            "--git-ref",
            "v1.2",
            "--",
            cfg,
            "train.steps=5",
            "run.dir=gs://b/r",
        ],
        env,
    )
    cmds = [argv_of(line) for line in lines]
    assert all(c[0] == "gcloud" for c in cmds)  # nothing built locally
    create = cmds[2]
    assert "--accelerator-type=v4-32" in create and "--version=tpu-ubuntu2204-base" in create
    assert "--spot" not in create and "--reserved" not in create
    clone, scp, install, start, stream, _result = cmds[4:]
    assert "git clone --quiet https://x/repo.git $HOME/trainer" in command_of(clone)
    assert "origin/v1.2" in command_of(clone) and "--worker=all" in clone
    assert scp[5:7] == [cfg, "trainer-303m:trainer/configs/303m.yml"] and "--worker=all" in scp
    assert "pip install --progress-bar off -e '.[tpu]'" in command_of(install) and "--worker=all" in install
    assert "4 worker(s)" in lines[cmds.index(start)] and "--worker=all" in start
    assert "python3 -m trainer.main configs/303m.yml train.steps=5 run.dir=gs://b/r" in command_of(start)
    assert "tail --pid" in command_of(stream)


def test_dry_run_queued_reserved_with_retries(env: dict[str, str], cfg: str) -> None:
    lines = plan_lines(
        [*UP, "--queued", "--reserved", "--retries", "3", "--run-dir", "gs://b/r", "--name", "my-tpu", "--", cfg], env
    )
    cmds = [argv_of(line) for line in lines]
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert cmds[0][:6] == [*qr, "describe", "my-tpu"] and "--format=value(state.state)" in cmds[0]
    assert cmds[1] == [*qr, "delete", "my-tpu", "--zone=us-central2-b", "--project=proj", "--force", "--quiet"]
    assert cmds[2] == [
        *qr,
        "create",
        "my-tpu",
        "--zone=us-central2-b",
        "--project=proj",
        "--node-id=my-tpu",
        "--accelerator-type=v4-8",
        "--runtime-version=tpu-ubuntu2204-base",
        "--reserved",
    ]
    assert "until the state is ACTIVE" in lines[3]
    assert cmds[-1][3:6] == ["tpu-vm", "ssh", "my-tpu"] and "up to 3 time(s)" in lines[-1]


def test_dry_run_library_path_without_gcloud(env: dict[str, str], cfg: str, tmp_path: Path) -> None:
    (tmp_path / "emptybin").mkdir()
    env = dict(env, PATH=str(tmp_path / "emptybin"))  # no gcloud: --api auto picks the library
    r = cli([*UP, "--spot", "--dry-run", "--", cfg], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    parent = "projects/proj/locations/us-central2-b"
    assert lines[0].startswith(f"tpu_v2.TpuClient.get_node(GetNodeRequest(name='{parent}/nodes/trainer-303m'))")
    assert lines[1].startswith("tpu_v2.TpuClient.delete_node(DeleteNodeRequest(")
    assert lines[2].startswith(
        f"tpu_v2.TpuClient.create_node(CreateNodeRequest(parent='{parent}', node_id='trainer-303m', "
        "node=Node(accelerator_type='v4-8', runtime_version='tpu-ubuntu2204-base', "
        "scheduling_config=SchedulingConfig(spot=True))))"
    )
    assert "gcloud CLI not found" in r.stderr and "ssh/scp" in r.stderr
    assert any("tpu-vm ssh" in line for line in lines)  # the worker steps still need gcloud
    # Without --dry-run it refuses before calling anything.
    r = cli([*UP, "--", cfg], env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "gcloud CLI not found" in r.stderr


def test_dry_run_library_queued_spot(env: dict[str, str], cfg: str) -> None:
    lines = plan_lines([*UP, "--api", "library", "--queued", "--spot", "--accelerator", "v4-16", "--", cfg], env)
    assert lines[0].startswith("tpu_v2alpha1.TpuClient.get_queued_resource(GetQueuedResourceRequest(")
    assert lines[1].startswith("tpu_v2alpha1.TpuClient.delete_queued_resource(") and "force=True" in lines[1]
    assert lines[2].startswith("tpu_v2alpha1.TpuClient.create_queued_resource(CreateQueuedResourceRequest(")
    assert "queued_resource_id='trainer-303m'" in lines[2] and "accelerator_type='v4-16'" in lines[2]
    assert "spot=Spot()" in lines[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accelerator", "v4-12"], "unknown accelerator 'v4-12'; did you mean 'v4-16'?"),
        (["--accelerator", "v5p-9"], "did you mean 'v5p-8'?"),
        (["--accelerator", "v9-8"], "unknown accelerator 'v9-8'; did you mean"),
        (["--accelerator", "v5p-8"], "zone us-central2-b has no v5p TPUs"),
        (["--accelerator", "v6e-8", "--zone", "us-central1-a"], "us-east1-d"),
    ],
)
def test_refusals_one_line_exit_2(env: dict[str, str], cfg: str, args: list[str], message: str) -> None:
    r = cli([*UP, *args, "--dry-run", "--", cfg], env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr


def test_missing_config_and_project(env: dict[str, str], cfg: str) -> None:
    r = cli([*UP, "--dry-run", "--", "configs/nope.yml"], env)
    assert r.returncode == 2 and r.stderr == "error: config file not found: configs/nope.yml\n"
    r = cli(["--zone", "us-central2-b", "--", cfg], env)  # no project anywhere, not a dry run
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no project" in r.stderr
    r = cli(["--zone", "us-central2-b", "--dry-run", "--", cfg], env)  # a dry run too: a plan for no project is none
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "no project" in r.stderr
    r = cli(["--zone", "us-central2-b", "--project", "YOUR_PROJECT", "--dry-run", "--", cfg], env)
    assert r.returncode == 2 and r.stdout == "" and "example placeholder" in r.stderr
    (Path(env["CLOUDSDK_CONFIG"]) / "configurations").mkdir()
    (Path(env["CLOUDSDK_CONFIG"]) / "configurations" / "config_default").write_text("[core]\nproject = fromcfg\n")
    assert "--project=fromcfg" in plan_lines(["--zone", "us-central2-b", "--", cfg], env)[0]
    r = cli(["--zone", "us-central2-b", "--dry-run"], env)
    assert r.returncode == 2 and "missing CONFIG" in r.stderr


def test_unknown_zone_warns_and_continues(env: dict[str, str], cfg: str) -> None:
    r = cli(["--zone", "mars-north1-a", "--project", "p", "--dry-run", "--", cfg], env)
    assert r.returncode == 0 and "warning: zone 'mars-north1-a'" in r.stderr
    assert "--zone=mars-north1-a" in r.stdout


def test_status_logs_stop_delete_plans(env: dict[str, str]) -> None:
    flags = ["--zone", "us-central2-b", "--project", "proj", "--name", "trainer-303m"]
    status = [argv_of(x) for x in plan_lines(["status", *flags], env)]
    assert status[0] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "describe",
        "trainer-303m",
        "--zone=us-central2-b",
        "--project=proj",
    ]
    assert status[1][4] == "ssh" and "--worker=all" in status[1] and "running" in command_of(status[1])
    logs = [argv_of(x) for x in plan_lines(["logs", *flags, "--worker", "2"], env)]
    assert len(logs) == 1 and "--worker=2" in logs[0] and "tail --pid" in command_of(logs[0])
    stop = [argv_of(x) for x in plan_lines(["stop", *flags], env)]
    assert len(stop) == 1 and "--worker=all" in stop[0] and "kill -TERM" in command_of(stop[0])
    assert [argv_of(x) for x in plan_lines(["delete", *flags], env)] == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "delete",
            "trainer-303m",
            "--zone=us-central2-b",
            "--project=proj",
            "--quiet",
        ]
    ]
    assert plan_lines(["delete", *flags, "--api", "library"], env) == [
        "tpu_v2.TpuClient.delete_node(DeleteNodeRequest(name='projects/proj/locations/us-central2-b/nodes/trainer-303m'))"
    ]
    qstatus = [argv_of(x) for x in plan_lines(["status", *flags, "--queued"], env)]
    assert [c[3] for c in qstatus] == ["queued-resources", "tpu-vm", "tpu-vm"]
    r = cli(["stop", "--zone", "us-central2-b", "--dry-run"], env)
    assert r.returncode == 2 and "--name" in r.stderr


# ---------------------------------------------------------------- the worker scripts, run here with bash

FAKE_TRAINER = textwrap.dedent(
    """
    import sys, time
    print("trainer args:", *sys.argv[1:], flush=True)
    if "sleep=1" in sys.argv:
        time.sleep(60)
    sys.exit(3)
    """
)


def _job(**kw) -> tpu_job.Job:
    base = dict(
        name="t",
        zone="us-central2-b",
        project="p",
        accelerator=parse_accelerator("v4-8"),
        runtime="tpu-ubuntu2204-base",
        remote_config="configs/x.yml",
    )
    return tpu_job.Job(**{**base, **kw})


def _bash(step: tpu_job.Step, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command_of(list(step.argv))], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_worker_scripts_start_stream_result_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "trainer" / "trainer").mkdir(parents=True)
    (home / "trainer" / "trainer" / "__init__.py").write_text("")
    (home / "trainer" / "trainer" / "main.py").write_text(FAKE_TRAINER)
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "python3").symlink_to(PY)
    (fakebin / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/gcloud.calls\n')
    (fakebin / "gcloud").chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{fakebin}:{os.environ['PATH']}")

    job = _job(overrides=("train.steps=2", "run.dir=gs://b/r"), run_dir="gs://b/r")
    assert _bash(tpu_steps.start_step(job), env).returncode == 0
    streamed = _bash(tpu_steps.stream_step(job), env)  # returns when the trainer exits
    assert "trainer args: configs/x.yml train.steps=2 run.dir=gs://b/r" in streamed.stdout
    assert _bash(tpu_steps.result_step(job), env).stdout.strip() == "3"
    calls = (tmp_path / "gcloud.calls").read_text()
    assert "storage cp --quiet" in calls and "gs://b/r/logs/train-" in calls  # log copied to the run dir

    job = _job(overrides=("sleep=1",))
    started = _bash(tpu_steps.start_step(job), env)
    assert started.returncode == 0
    assert "stopping the previous run" not in started.stdout  # nothing of the first run outlived it
    time.sleep(0.5)
    assert _bash(tpu_steps.result_step(job), env).stdout.strip() == "running"
    assert ": running" in _bash(tpu_steps.job_status_step(job), env).stdout
    assert ": stopped" in _bash(tpu_steps.stop_step(job), env).stdout
    assert _bash(tpu_steps.result_step(job), env).stdout.strip() == "unknown"
    assert (home / "trainer-logs" / "train.log.prev").exists()


# ---------------------------------------------------------------- the executor, against a fake gcloud

FAKE_GCLOUD = """#!{py}
import os, sys
d = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
state = os.path.join(d, "state")
cmd = next((a.split("=", 1)[1] for a in args if a.startswith("--command=")), "")
kind = args[3]
if kind == "ssh":
    for key, name in (("git clone", "clone"), ("pip install", "install"), ("setsid", "start"),
                      ("tail --pid", "stream"), ("then cat", "result")):
        if key in cmd:
            kind = "ssh:" + name
with open(os.path.join(d, "calls"), "a") as f:
    f.write(kind + "\\n")
if kind == "describe":
    if not os.path.exists(state):
        sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: node not found")
    print(open(state).read())
elif kind == "create":
    open(state, "w").write("READY")
elif kind == "delete":
    os.remove(state)
elif kind == "ssh:stream":
    print("step 1 loss 2.0")
    if os.path.exists(os.path.join(d, "preempt")):
        os.remove(os.path.join(d, "preempt"))
        open(state, "w").write("PREEMPTED")
elif kind == "ssh:result":
    print(open(os.path.join(d, "rc")).read())
"""


@pytest.fixture()
def fake_gcloud(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "fake"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "gcloud").write_text(FAKE_GCLOUD.format(py=PY))
    (d / "bin" / "gcloud").chmod(0o755)
    (d / "rc").write_text("0")
    return d, dict(env, FAKE_GCLOUD_DIR=str(d), PATH=f"{d / 'bin'}:{env['PATH']}")


GIT_UP = [*UP, "--ship", "git", "--git-url", "u", "--git-ref", "r", "--poll-seconds", "0", "--skip-fit-check"]
ONE_RUN = ["ssh:clone", "scp", "ssh:install", "ssh:start", "ssh:stream"]


def _calls(d: Path) -> list[str]:
    return [c for c in (d / "calls").read_text().split() if c != "describe"]


def test_up_creates_then_recreates_after_preemption(fake_gcloud, cfg: str) -> None:
    d, env = fake_gcloud
    (d / "preempt").write_text("")
    r = cli([*GIT_UP, "--spot", "--retries", "1", "--", cfg], env)
    assert r.returncode == 0, r.stderr
    assert _calls(d) == ["create", *ONE_RUN, "delete", "create", *ONE_RUN, "ssh:result"]
    assert "retry 1/1" in r.stderr and "re-attach:" in r.stderr


def test_up_reuses_a_ready_vm_and_returns_the_trainer_code(fake_gcloud, cfg: str) -> None:
    d, env = fake_gcloud
    (d / "state").write_text("READY")
    (d / "rc").write_text("7")
    r = cli([*GIT_UP, "--", cfg], env)
    assert r.returncode == 7, r.stderr
    assert _calls(d) == [*ONE_RUN, "ssh:result"]
    assert "reusing trainer-303m" in r.stderr


def test_up_preempted_without_retries_fails(fake_gcloud, cfg: str) -> None:
    d, env = fake_gcloud
    (d / "preempt").write_text("")
    r = cli([*GIT_UP, "--", cfg], env)
    assert r.returncode == 1 and "no retries are left" in r.stderr
    assert _calls(d) == ["create", *ONE_RUN]


def test_placeholder_bucket_refused_before_any_plan(env: dict[str, str]) -> None:
    r = cli([*UP, "--accelerator", "v4-32", "--dry-run", "--", str(REPO / "configs" / "303m.yml")], env)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "gs://YOUR_BUCKET" in r.stderr and "example placeholder" in r.stderr


def test_up_refuses_a_config_that_does_not_fit_before_creating(fake_gcloud, tmp_path: Path) -> None:
    pytest.importorskip("libtpu", reason="the fit check compiles with libtpu (pip install -e '.[tpu]')")
    d, env = fake_gcloud
    big = tmp_path / "big.yml"  # a 4M-parameter model with a 4M-token batch: the compiler refuses it at once
    big.write_text(
        f"base: {REPO / 'configs' / 'tiny.yml'}\ntrain: {{global_batch_size: 16384}}\n"
        "model: {remat_policy: none}\nrun: {dir: /tmp/never-written}\n"
    )
    r = cli([*UP, "--ship", "git", "--git-url", "u", "--git-ref", "r", "--", str(big)], env, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "does not fit" in r.stderr and "GiB > 30.75 GiB per chip on v4-8" in r.stderr and "--target v4-8" in r.stderr
    assert not (d / "calls").exists()  # not even a describe: nothing was called
