"""The run lifecycle: one configuration from its flags to its results, and attacking a trained run.

Modules, top to bottom (each imports only those below it; .importlinter holds the contract):
  experiment     one configuration start to finish (train, then attack); `main_guard` for entry points
  plan           run_exp.sh's planner: a configuration's run folder name and state
  attack_runner  attacking a trained run, in memory or rebuilt from its folder
  trained_run    rebuilding a trained run from its folder (config, data, model loaded strictly, defences)
  validation     every setting checked before any work starts
  run_folder     the run folder: files, recorded state, lock
  identity       what identifies a run's results
  flags          every flag of one configuration
"""
