"""Will the job fit? Compile the real train and eval steps for a TPU slice that is not here (`--dry-run --target`).

`targets` turns gcloud TPU type names into topologies, `padding` says which axes shard unevenly, `check` compiles and
measures, and suggests the smallest change that fits.
"""
