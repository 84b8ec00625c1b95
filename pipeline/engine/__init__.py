"""The engine: the stage contract, manifest, plan, runner, executors, checkpoints, ledger, lock, shards, card, Ray."""
