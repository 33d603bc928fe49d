"""Launchers that start `python -m trainer.main` somewhere: `local` (N cooperating processes on this machine) and
`tpu_vm` (a Cloud TPU VM slice: create, run on every worker, watch, delete), with `tpu_catalog` (accelerator types,
runtimes, zones), `tpu_job` (a launch and the form of its steps), `tpu_steps` (each command as a list of steps),
`tpu_runner` (running them) and `preflight` (the checks before anything is paid for). `launch/` imports `trainer/`,
never the reverse."""
