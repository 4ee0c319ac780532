"""The analysis layer: a study's recorded trials turned into tables, sentences and figures.

``trials`` reads trial tables (MLflow child runs or results.csv), ``summary``
summarises cells and derives metrics, ``prose`` words the headline,
``figures`` draws; :mod:`study.report` writes them. Nothing here trains or talks to MLflow.
"""
