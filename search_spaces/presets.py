"""Per-dataset protocols: student, teacher, batch, recipe and default budgets.

A preset says how students are trained on a dataset; a space (spaces.py) says
which cells of the study to run. Numbers come from DESIGN.md's measurements
on this machine (digits, Fashion-MNIST) and from the DD literature (CIFAR:
ConvNet-3 width 128; ImageNet: ResNet-18, AdamW, as in RDED / SRe2L).
"""

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
    "cifar10": {
        "dataset": "cifar10",
        "model": "convnet",
        "model_kwargs": {"width": 128},
        "batch_size": 256,
        "recipe": "sgd-v1",
        "temperature": 4.0,
        "cutmix_prob": 0.5,
        "teacher": {"model": "resnet18", "model_kwargs": {}, "epochs": 100, "batch_size": 256, "recipe": "sgd-v1",
                    "lr": 0.1},
        "budgets": [1000, 4000, 16000],
    },
    "cifar100": {
        "dataset": "cifar100",
        "model": "convnet",
        "model_kwargs": {"width": 128},
        "batch_size": 256,
        "recipe": "sgd-v1",
        "temperature": 4.0,
        "cutmix_prob": 0.5,
        "teacher": {"model": "resnet18", "model_kwargs": {}, "epochs": 100, "batch_size": 256, "recipe": "sgd-v1",
                    "lr": 0.1},
        "budgets": [2000, 8000, 32000],
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
