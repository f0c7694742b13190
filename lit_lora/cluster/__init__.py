"""The cluster runtime: what makes a ``lit-lora fit`` survive SLURM, shared filesystems and many ranks.

* ``preemption``: ``PreemptionCheckpoint`` (the ``preemption:`` YAML key): SLURM's requeue signal or SIGTERM
  becomes a checkpoint at the next optimizer-step boundary, ``scontrol requeue`` and a clean exit.
* ``checkpoint_io``: atomic checkpoint writes (``AtomicCheckpointIO``, a Lightning ``CheckpointIO`` plugin;
  ``AtomicDirectorySave`` for DeepSpeed's directories) and the removal of partial ones a kill left behind.
* ``csv_history``: ``ResumableCSVLogger``, whose ``metrics.csv`` a requeued job continues, and
  ``pin_log_dir``, which keeps every restart of a SLURM job in one run directory.
* ``launch_checks``: the SLURM allocation against ``trainer.num_nodes`` / ``devices`` before anything loads,
  and the run directory at the start of ``fit`` (requeued without a checkpoint, inside the data or the
  model directory, an earlier run's results).
* ``sharding``: full weights of a ZeRO-3 / FSDP model for export, loading under ZeRO-3, the device a rank
  evaluates on (``run_device``), and ``DecoderLayerWrapPolicy``, the FSDP auto-wrap policy.
* ``strategy_config``: what a Trainer ``strategy`` value runs (family; DeepSpeed's ZeRO stage and offload from its
  arguments, its config dict or JSON file), read once for the config check, the estimate and the optimizer.
* ``tracking``: ``WandbRun``, Weights & Biases with one run per job across requeues and secrets redacted;
  ``wandb_history``: the steps a W&B run already holds, so a resumed job does not log them twice.
* ``runtime``: what the CLI installs around every Trainer besides ``preemption:`` (one job per callback), on a
  laptop too: atomic checkpoint writes and the run-directory check are read from the ``preemption:`` section.
* ``run_dir``: where a run's files go (the logger's directory, else ``default_root_dir``), the same on every rank.
* ``run_files``: what a run directory holds, by file name: whether a directory holds a run, the run a checkpoint
  belongs to, its ``hpc_ckpt_N.ckpt`` files (read cheaply by the launch checks, ``compare`` and the sweep).
* ``step_seed``: ``StepSeed``, torch seeded before every training micro-batch, so a resume redraws dropout exactly.
* ``step_aligned``: ``StepAlignedCheckpoints``, a checkpoint inside an accumulation window resumes at its start.
* ``fsdp_units``: the FSDP root unit's weights (embeddings, LM head) usable where FSDP leaves them unusable:
  registered again after a backward on one rank (``FrozenFSDPUnitsRestored``), whole around ``generate``.
* ``early_signals``: SLURM's requeue signal and SIGTERM kept from the first line of ``lit-lora fit`` (during the
  imports) until ``preemption`` takes them over.
* ``lightning_compat``: every private Lightning API the above touches, behind small named functions,
  with the Lightning versions they were checked against (``tests/test_lightning_compat.py``).

The modules are imported by their full path; this package imports none of them itself::

    from lit_lora.cluster.tracking import WandbRun
    from lit_lora.cluster.launch_checks import check_allocation
    check_allocation(num_nodes=1, devices=1, env={})   # outside SLURM: nothing to compare

The flat modules they came from (``lit_lora.preemption``, ``lit_lora.tracking`` …) re-export them, so class
paths in existing configs (``lit_lora.tracking.WandbRun``, ``lit_lora.sharding.DecoderLayerWrapPolicy``,
``lit_lora.csv_history.ResumableCSVLogger``) keep working.
"""
