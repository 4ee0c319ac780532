"""Write any selection or distilled set of the harness in the format ``external:`` reads, with a JSON card.

    python -m study.export --dataset digits --selector herding --ipc 10 --seed 0 --out herding10.pt
    python -m study.export --selector dm --ipc 1 --params '{"iterations": 1000}' --out dm1.npz
    python -m study.export --selector cad_prune --ipc 10 --steps 300 --regime sl_kd --out cad10/
    python -m study.export --config config.json --out set.pt     # the set a recorded trial trained on

The cell is resolved as study.run and a study resolve it (the preset, then the
flags, then ``--set``: study.runs.spec.resolve_cell), and the set is made
exactly as a trial makes it (study.runs.trial: context_for, get_selection,
build_selector), through the same preparation cache, so the exported set of
``--seed R`` is the set repeat R of the matching trial trains on. ``--seed``
is that repeat index; the card records the selection seed it derives.
``--set key=value`` sets any other setting a selector may read
(``model_kwargs.width``, ``teacher.epochs``, ...), as in a study.

The output format follows the suffix of ``--out``: ``.pt`` (a dict of uint8
NCHW ``images``, int64 ``labels`` and ``classes``), ``.npz`` (the same arrays)
or, for anything else, an ImageFolder tree of PNG files. The card (FILE.json
beside a file, card.json inside a folder) holds the dataset, selector,
parameters, IPC, seed and the content hash that ``external:`` records. See
docs/external.md.
"""
from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from study.core.cache import atomic_write_bytes, atomic_write_text
from search_spaces import DEFAULT_CELL
from study.cli import add_resolution_args, friendly_errors, parser, print_config, read_config
from study.runs.config import TrialConfig
from study.core.errors import StudyError
from study.selection.external_formats import CARD_NAME, FILE_FORMATS, card_path, compute_content_hash, hash_scheme

CARD_FORMAT = "hardtruths-set/1"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same set always gives the same bytes and hash


def jsonable(obj):
    """Provenance as plain JSON: tensors and arrays become lists, other objects their str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_pt(images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> None:
    buf = io.BytesIO()
    torch.save({"images": images.contiguous(), "labels": labels.to(torch.int64), "classes": list(classes)}, buf)
    atomic_write_bytes(out, buf.getvalue())


def write_npz(images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> None:
    """numpy.savez layout (one .npy member per array), written with fixed entry times so bytes are reproducible."""
    arrays = {"images": images.numpy(), "labels": labels.to(torch.int64).numpy(), "classes": np.array(classes)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME), member.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)
    atomic_write_bytes(out, buf.getvalue())


def write_folder(images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> None:
    """One folder per class named by its zero-padded index, PNG files named by their position in the set."""
    from PIL import Image

    digits_c = len(str(len(classes) - 1))
    digits_i = max(6, len(str(len(labels) - 1)))
    for c in range(len(classes)):
        (out / f"{c:0{digits_c}d}").mkdir(parents=True, exist_ok=True)
    pixels = images.permute(0, 2, 3, 1).numpy()
    for i, (img, label) in enumerate(zip(pixels, labels.tolist())):
        picture = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        atomic_write_bytes(out / f"{label:0{digits_c}d}" / f"{i:0{digits_i}d}.png", buf.getvalue())


def output_kind(out: Path) -> str:
    return FILE_FORMATS.get(out.suffix.lower(), "imagefolder")


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite unless --force; a folder is only ever replaced when it holds an earlier export's card."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if output_kind(out) == "imagefolder":
        if not (force and out.is_dir() and (out / CARD_NAME).is_file()):
            raise StudyError(f"{out} already exists and is not an empty folder; choose another --out"
                             + ("" if force else " or add --force to replace an earlier export") + ".")
        import shutil

        shutil.rmtree(out)
    elif not force:
        raise StudyError(f"{out} already exists; choose another --out or add --force.")


def write_set(images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> str:
    """Write (uint8 NCHW images, labels) to ``out`` in the format its suffix names; return the format."""
    kind = output_kind(out)
    {"pt": write_pt, "npz": write_npz, "imagefolder": write_folder}[kind](images, labels, classes, out)
    return kind


def export_selection(cfg: TrialConfig, repeat: int, out: str | Path, cache_dir=None, device: str | None = None,
                     force: bool = False) -> dict:
    """Make (or read from the cache) repeat ``repeat`` of ``cfg``'s selection, write it to ``out`` with its card,
    and return the card."""
    from study.selection import build_selector
    from study.core.train import default_device
    from study.runs.trial import context_for, get_selection, selection_key
    from study.runs.validate import validate_trial

    out = Path(out).expanduser()
    if cfg.is_full_data:
        raise StudyError("The full training set is not a selection; export a selector's subset instead.")
    if repeat < 0:
        raise StudyError(f"--seed is a repeat index (0, 1, ...), not {repeat}.")
    validate_trial(cfg)
    check_out(out, force)
    ctx = context_for(cfg, cache_dir, device or default_device())
    selector = build_selector(cfg.selector, **cfg.selector_params)
    selection = get_selection(ctx, selector, cfg, repeat)
    kind = write_set(selection.images, selection.labels, ctx.data.classes, out)
    key = selection_key(cfg, selector, repeat)
    card = {
        "format": CARD_FORMAT, "file_format": kind, "content_hash": compute_content_hash(out),
        "hash_scheme": hash_scheme(out),
        "dataset": cfg.dataset, "classes": ctx.data.classes, "image_shape": list(ctx.data.image_shape),
        "num_images": len(selection), "ipc": cfg.ipc, "selector": cfg.selector, "family": selector.family,
        "params": cfg.selector_params, "seed": repeat, "selection_seed": cfg.selection_seed(repeat),
        "synthetic": selection.is_synthetic,
        "indices": selection.indices.tolist() if selection.indices is not None else None,
        "teacher": key.get("teacher"), "budget": key.get("budget"),
        "provenance": jsonable(selection.provenance),
    }
    atomic_write_text(card_path(out), "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in card.items()) + "\n}\n")
    return card


def parse(argv=None) -> argparse.Namespace:
    p = parser("python -m study.export", __doc__)
    add_resolution_args(p, "trial config", "config.json, record.json, study.run's --json or --print-config output")
    p.add_argument("--selector", default=None, help=f"selector whose set is exported (default: "
                                                    f"{DEFAULT_CELL['selector']}, or --config's)")
    p.add_argument("--params", default=None, help="selector parameters as a JSON object, as --set "
                                                  "selector_params.SELECTOR.KEY=VALUE sets them (default: none)")
    p.add_argument("--ipc", type=int, default=None, help=f"images per class (default: {DEFAULT_CELL['ipc']}, or "
                                                         f"--config's)")
    p.add_argument("--regime", default=None, help="the trial's label regime, which a budget-aware selector reads "
                                                  f"(default: {DEFAULT_CELL['regime']}, or --config's)")
    p.add_argument("--steps", type=int, default=None, help="the trial's student steps, which a budget-aware selector "
                                                           "reads (default: the preset's first budget, or --config's)")
    p.add_argument("--seed", type=int, default=0, help="the repeat index whose selection is exported")
    p.add_argument("--out", default=None, help="FILE.pt, FILE.npz, or a folder for an ImageFolder tree of PNGs "
                                               "(required unless --print-config)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--cache-dir", default=None, help="preparation cache (default: ~/.cache/hardtruths)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    return p.parse_args(argv)


def params_overrides(selector: str, text: str | None) -> list[str]:
    """--params as the --set settings it stands for."""
    if text is None:
        return []
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        raise StudyError(f"--params must be a JSON object, e.g. '{{\"iterations\": 500}}', not {text!r}.") from None
    if not isinstance(params, dict):
        raise StudyError(f"--params must be a JSON object, not {text!r}.")
    return [f"selector_params.{selector}.{k}={json.dumps(v)}" for k, v in params.items()]


def config_from_args(a: argparse.Namespace) -> TrialConfig:
    """The cell whose selection is exported, resolved as study.run and a study resolve it."""
    from study.runs.spec import resolve_cell

    base = read_config(a.config) if a.config else None
    selector = a.selector or (base or {}).get("selector") or DEFAULT_CELL["selector"]
    return resolve_cell(a.selector, a.ipc, a.regime, a.steps, None, a.preset, a.dataset, a.data_root,
                        a.overrides + params_overrides(selector, a.params), base)


@friendly_errors
def main(argv=None) -> None:
    a = parse(argv)
    cfg = config_from_args(a)
    if a.print_config:
        print_config(cfg.to_dict())
        return
    if not a.out:
        raise StudyError("--out is required: FILE.pt, FILE.npz, or a folder for an ImageFolder tree of PNGs.")
    card = export_selection(cfg, a.seed, a.out, a.cache_dir, a.device, a.force)
    where = card_path(Path(a.out).expanduser())
    print(f"wrote {card['num_images']} images ({card['selector']}, ipc={card['ipc']}, seed {card['seed']}) to "
          f"{a.out} [{card['file_format']}], card {where}, sha256 {card['content_hash'][:16]}...")


if __name__ == "__main__":
    main()
