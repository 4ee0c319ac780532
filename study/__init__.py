"""hardtruths: scaling studies of dataset distillation and coreset selection.

Layers, each importing only those before it: ``core`` (training), ``selection`` (selectors and scorers),
``runs`` (trial configs, one trial, its records), ``analysis`` (tables, prose, figures). The modules here are
the command-line entry points (``scaling``, ``run``, ``report``, ``export``); Ray lives in ``trainables``.
"""
