"""Will the job fit on a target: TPUs or GPUs that are not here, compiled for with the real train and eval steps
(`--dry-run --target`).

`tpu` turns gcloud TPU type names into topologies, `gpu` does the same for NVIDIA GPU machines (`2xl40s`), `padding`
says which axes shard unevenly, `check` compiles and measures, and suggests the smallest change that fits.
"""
