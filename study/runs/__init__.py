"""A study's orchestration and records, without Ray: the trial config and the study spec, one trial run start
to finish (:func:`study.runs.trial.run_trial`), and its record in the ledger, the Tune checkpoints and MLflow
(the only module that talks to MLflow is :mod:`study.runs.tracking`).
"""
