"""A study's orchestration and records, without Ray: the trial config and the study spec, one trial run start
to finish (:func:`study.runs.trial.run_trial`), and what it leaves: its record (:mod:`study.runs.record`) in its
Tune checkpoint, in results.csv (:mod:`study.runs.results_table`) and in MLflow (the only module that talks to
MLflow is :mod:`study.runs.tracking`). docs/design.md lists every module.
"""
