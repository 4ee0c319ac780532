"""Per-dataset protocols: student, teacher, batch, recipe and default budgets.

A preset says how students are trained on a dataset; a space (spaces.py) says
which cells of the study to run. Numbers come from DESIGN.md's measurements
on this machine (digits, Fashion-MNIST) and from the DD literature (CIFAR:
RDED's and SRe2L's released evaluation with their BatchNorm ConvNet-3, width
128; ImageNet: ResNet-18, AdamW, as in RDED / SRe2L). A ``batch_size`` may be
a table by IPC (study.core.protocol.batch_size_for).
"""

# What every command trains on when none is named, and the cell one trial (study.run, study.export) is where
# the command line names none; its budget is the preset's first.
DEFAULT_PRESET = "digits"
DEFAULT_CELL = {"selector": "random", "ipc": 10, "regime": "hl", "seeds": 1}

PRESETS = {
    "digits": {
        "dataset": "digits",
        "model": "convnet",
        "model_kwargs": {"width": 32},
        "batch_size": 64,
        "recipe": "adamw-v1",
        "temperature": 4.0,
        "teacher": {"model": "convnet", "model_kwargs": {"width": 32}, "epochs": 50, "batch_size": 64},
        "budgets": [500],
    },
    "fashion-mnist": {
        "dataset": "fashion-mnist",
        "model": "convnet",
        "model_kwargs": {"width": 32},
        "batch_size": 128,
        "recipe": "adamw-v1",
        "temperature": 4.0,
        "teacher": {"model": "convnet", "model_kwargs": {"width": 64}, "epochs": 8, "batch_size": 128},
        "budgets": [500, 2000, 8000],
    },
    # The RDED / SRe2L authors' own evaluation (docs/sre2l.md): their BatchNorm ConvNet as teacher and student,
    # KL at T = 20 without T^2, CutMix on every batch, the release-v1 recipe, their batch sizes. RDED reports 50.2%
    # on CIFAR-10 with this ConvNet at IPC 10: 300 epochs of 100 images at batch 50 = 600 steps, the first budget.
    "cifar10": {
        "dataset": "cifar10",
        "model": "convnet_bn",
        "model_kwargs": {"width": 128},
        "batch_size": {"1": 10, "10": 50, "50": 100, "full": 256},
        "recipe": "release-v1",
        "temperature": 20.0,
        "t2_scale": False,
        "cutmix_prob": 1.0,
        "teacher": {"model": "convnet_bn", "model_kwargs": {"width": 128}, "epochs": 50, "batch_size": 256},
        "budgets": [600, 1500, 16000],
    },
    # RDED's CIFAR-100 ConvNet-to-ConvNet run overrides the batch table: batch 25 and lr 2e-3 at every IPC
    # (argument.py:309-315); at IPC 10, 300 epochs of 1000 images = 12000 steps.
    "cifar100": {
        "dataset": "cifar100",
        "model": "convnet_bn",
        "model_kwargs": {"width": 128},
        "batch_size": 25,
        "recipe": "release-v1",
        "lr": 0.002,
        "temperature": 20.0,
        "t2_scale": False,
        "cutmix_prob": 1.0,
        "teacher": {"model": "convnet_bn", "model_kwargs": {"width": 128}, "epochs": 50, "batch_size": 256},
        "budgets": [2000, 12000, 32000],
    },
    "imagenet": {
        "dataset": "imagefolder:/data/imagenet",
        "model": "resnet18",
        "model_kwargs": {},
        "batch_size": 256,
        "recipe": "adamw-v1",
        "temperature": 20.0,
        "t2_scale": False,
        "cutmix_prob": 1.0,
        # ImageNet-1K's teacher is the user's own trained ResNet-18 (nothing is downloaded or trained here):
        # a state dict at this path, or wherever --set teacher.path=FILE points (docs/imagenet.md).
        "teacher": {"model": "resnet18", "model_kwargs": {}, "epochs": 90, "batch_size": 256,
                    "path": "/data/imagenet/teacher.pt"},
        "budgets": [5000, 20000, 150000],
    },
}
