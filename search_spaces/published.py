"""The paper's published cells, as data: what a study run under a ``*-paper`` preset is compared with.

Source: Dey et al., "Rethinking Dataset Distillation: Hard Truths about Soft
Labels" (CVPR 2026, arXiv 2604.18811): CIFAR-100 with ConvNet-D3 (its Tab. 11
for CAD-Prune and CA2D, hard labels; its Tab. 6 for the rest) and TinyImageNet
with ConvNet-D4 (its Tab. 2). Transcribed from andriotis/ca2d, whose
``tex/tab6_cifar100.tex`` and ``tex/tab2_tinyimagenet.tex`` list the paper's
rows above their first rule, and whose ``ca2d.py`` (``PAPER_REFERENCE``) holds
Tab. 11; every number here was checked against those files. Accuracies are
test top-1 in percent, mean and std over the paper's seeds.

A key is (dataset, model, preset, selector, IPC, regime): ``model`` names the
paper's student (ConvNet-D3 = ``convnet`` width 128 depth 3), ``preset`` the
protocol here that follows the paper's (search_spaces/presets.py), the
selector its name in this project's registry (K-centers is ``kcenter``).
"""

SOURCE = ("Dey et al., Rethinking Dataset Distillation: Hard Truths about Soft Labels, CVPR 2026 "
          "(arXiv 2604.18811), Tab. 6 / 11 (CIFAR-100, ConvNet-D3) and Tab. 2 (TinyImageNet, ConvNet-D4), "
          "as transcribed in andriotis/ca2d tex/tab6_cifar100.tex, tex/tab2_tinyimagenet.tex, ca2d.py")

# the paper's students as this project's registry builds them
MODELS = {"ConvNet-D3": ("convnet", {"width": 128, "depth": 3}), "ConvNet-D4": ("convnet", {"width": 128, "depth": 4})}


def _cells(dataset: str, model: str, preset: str, rows: dict) -> dict:
    """{(selector, regime): ((mean, std) at IPC 10, (mean, std) at IPC 50)} -> keyed cells."""
    return {(dataset, model, preset, selector, ipc, regime): value
            for (selector, regime), values in rows.items() for ipc, value in zip((10, 50), values)}


PUBLISHED = {
    **_cells("cifar100", "ConvNet-D3", "cifar100-paper", {
        ("random", "hl"): ((18.64, 0.25), (34.66, 0.41)),
        ("kcenter", "hl"): ((25.04, 0.30), (38.64, 0.43)),
        ("cad_prune", "hl"): ((22.95, 0.03), (37.87, 0.16)),
        ("ca2d", "hl"): ((20.95, 0.15), (34.37, 0.11)),
        ("dm", "hl"): ((29.23, 0.26), (42.32, 0.37)),
        ("random", "sl"): ((33.43, 0.18), (45.39, 0.23)),
        ("kcenter", "sl"): ((34.70, 0.13), (46.24, 0.12)),
        ("dm", "sl"): ((26.13, 0.10), (43.46, 0.18)),
    }),
    **_cells("tinyimagenet", "ConvNet-D4", "tinyimagenet-paper", {
        ("random", "hl"): ((6.88, 0.25), (18.62, 0.22)),
        ("kcenter", "hl"): ((11.38, 0.26), (22.02, 0.40)),
        ("dm", "hl"): ((13.51, 0.31), (22.76, 0.28)),
        ("random", "sl"): ((26.07, 0.48), (36.87, 0.17)),
        ("kcenter", "sl"): ((27.11, 0.13), (37.45, 0.21)),
        ("dm", "sl"): ((16.12, 0.33), (36.58, 0.07)),
    }),
}
