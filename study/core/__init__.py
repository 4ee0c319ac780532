"""The training core: data, models, augmentation, label regimes, recipes and the one training loop.

Plain PyTorch, importing nothing else of the project: a student can be
trained from here alone (:func:`study.core.train.train_student` under a
:class:`study.core.protocol.Protocol`), in any process, with or without Ray.
"""
