"""Will the job fit? Compile the real train and eval steps for TPUs or GPUs that are not here (`--dry-run --target`).

`targets` turns gcloud TPU type names into topologies, `gpu_targets` does the same for NVIDIA GPU machines
(`2xl40s`), `padding` says which axes shard unevenly, `check` compiles and measures, and suggests the smallest change
that fits.
"""
