"""A study spec: a named space plus a dataset preset plus the user's overrides, resolved and checked.

Resolution is pure data handling, so ``--dry-run`` can print the trial table
of even the ImageNet grid in a second, and every mistake is found before Ray
starts.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from search_spaces import DEFAULT_CELL, DEFAULT_PRESET, PRESETS, SPACES
from study.runs.config import FULL_DATA_IPC, TrialConfig
from study.core.errors import StudyError
from study.core.protocol import AXES as PROTOCOL_AXES, BUDGET_UNITS, Protocol, TeacherSpec, batch_size_for, steps_for
from study.core.seeding import content_hash
from study.runs.validate import teacher_fits, validate_trial

# What a preset (and --set) fixes for every cell: the student Protocol but for the study's axes, plus the data
# and the teacher.
PROTOCOL_FIELDS = tuple(n for n in Protocol.names() if n not in PROTOCOL_AXES) + ("dataset", "teacher", "data_root")


@dataclass
class StudySpec:
    space: str
    kind: str
    preset: str
    protocol: dict
    selectors: list[str]
    ipc: list[int]
    regimes: list[str]
    budgets: list[int]
    seeds: int
    full_data_reference: bool = True
    search: dict = field(default_factory=dict)
    num_samples: int = 1
    metric: str = "val_acc_mean"
    mode: str = "max"
    selector_params: dict = field(default_factory=dict)  # selector name -> its parameters, for every cell
    references: list[str] = field(default_factory=list)  # run once per (IPC, regime, budget), never varied
    selector_grid: dict = field(default_factory=dict)  # selector parameter -> its values, a cell for each combination
    budget_unit: str = "steps"  # or "epochs" over each cell's training set (study.core.protocol.steps_for)
    classes: int | None = None  # the dataset's classes, read from the data where budgets are in epochs
    per_regime: dict = field(default_factory=dict)  # regime -> protocol settings for its cells (regime_protocol)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        d = self.to_dict()
        d["protocol"] = {k: v for k, v in d["protocol"].items() if k != "data_root"}
        if d["budget_unit"] == "steps":
            del d["budget_unit"], d["classes"]
        for key in ("selector_params", "references", "selector_grid", "per_regime"):
            if not d[key]:
                del d[key]  # studies from before the setting existed keep their names
        return content_hash(d)

    def cell(self, selector: str, ipc: int, regime: str, budget: int, varied: dict | None = None,
             matched_ipc: int | None = None) -> TrialConfig:
        """One cell; ``varied`` (a point of the selector grid, or the searched keys left unset) on top of the
        selector's parameters. A full-data cell under epoch budgets trains for the compute of the subset cell at
        ``matched_ipc``."""
        params = {**self.selector_params.get(selector, {}), **(varied or {})}
        protocol = regime_protocol(self.protocol, self.per_regime, regime)
        sized = ipc if matched_ipc is None else matched_ipc
        if self.budget_unit == "epochs" and self.classes is None:
            raise StudyError("A study with budgets in epochs needs the dataset's number of classes (StudySpec.classes).")
        steps, batch, epochs = steps_for(budget, self.budget_unit, sized, self.classes or 0,
                                         batch_size_for(protocol["batch_size"], sized))
        return TrialConfig.from_dict({"selector": selector, "selector_params": params, "ipc": ipc, "regime": regime,
                                      "seeds": self.seeds, **protocol, "steps": steps, "batch_size": batch,
                                      "epochs": epochs})

    def variants(self) -> list[dict | None]:
        """What varies per selector cell: a point of the selector grid each, the searched parameters (unset until
        the search sets them, which also keeps a search group apart from the same selector run at its defaults),
        or nothing."""
        if self.selector_grid:
            names = list(self.selector_grid)
            return [dict(zip(names, values)) for values in itertools.product(*self.selector_grid.values())]
        if self.kind == "optuna":
            return [{name: None for name in self.searched_selector_params()}]
        return [None]

    def searched_selector_params(self) -> list[str]:
        return [k.partition(".")[2] for k in self.search if k.startswith("selector_params.")]

    def selections_known_ahead(self, cells: list[TrialConfig]) -> list[TrialConfig]:
        """Of ``cells``, those whose selection is fixed before any trial runs: a search group whose selector
        parameters Optuna chooses (``ca2d_alignment``'s ratio) has them unset until a trial has its point."""
        if not self.searched_selector_params():
            return cells
        groups = {c.hash for c in self.searched_cells()}
        return [c for c in cells if c.hash not in groups]

    def searched_cells(self) -> list[TrialConfig]:
        """The cells of ``selectors``: one per point of the selector grid, or one search group each in an optuna
        space."""
        subsets = [s for s in self.selectors if s != "full"]
        return [self.cell(s, i, r, b, v) for s, v, i, r, b in
                itertools.product(subsets, self.variants(), self.ipc, self.regimes, self.budgets)]

    def reference_cells(self) -> list[TrialConfig]:
        """The references, run once each: per (IPC, regime, budget) at their defaults, then the full-data
        reference (also when ``full`` is listed): per (regime, budget) under step budgets, where it ignores IPC;
        under epoch budgets per (IPC, regime, budget) at that IPC's subset cells' steps and batch, i.e. the same
        images seen (docs/report.md says why)."""
        out = [self.cell(s, i, r, b) for s, i, r, b in
               itertools.product(self.references, self.ipc, self.regimes, self.budgets)]
        if self.full_data_reference or "full" in self.selectors:
            matched = self.ipc if self.budget_unit == "epochs" else [None]
            full = [self.cell("full", FULL_DATA_IPC, r, b, matched_ipc=k)
                    for k, r, b in itertools.product(matched, self.regimes, self.budgets)]
            out += list({c.hash: c for c in full}.values())  # two IPCs at the same steps and batch run once
        return out

    def cells(self) -> list[TrialConfig]:
        return self.searched_cells() + self.reference_cells()

    def samples_per_group(self) -> int:
        """The Optuna trials a search group runs: ``num_samples``, or the number of points where every searched
        parameter takes listed values and there are fewer (a search never trains a point twice)."""
        if self.search and all(p["type"] in LISTED_SEARCH_TYPES for p in self.search.values()):
            return min(self.num_samples, math.prod(len(p["choices"]) for p in self.search.values()))
        return self.num_samples

    def trial_count(self) -> int:
        searched = len(self.searched_cells()) * (self.samples_per_group() if self.kind == "optuna" else 1)
        return searched + len(self.reference_cells())


def regime_protocol(protocol: dict, per_regime: dict, regime: str) -> dict:
    """The protocol of a regime's cells: the preset's, with its ``per_regime`` settings for that regime on top
    (the paper trains HL and SL students under different recipes, Tab. 4)."""
    return {**protocol, **per_regime.get(regime, {})}


def check_per_regime(per_regime: dict) -> None:
    """A preset's ``per_regime`` names label regimes, each with protocol settings a cell may vary."""
    from study.core.regimes import REGIMES

    allowed = [n for n in Protocol.names() if n not in PROTOCOL_AXES]
    for regime, settings in per_regime.items():
        REGIMES.get(regime)
        wrong = sorted(set(settings) - set(allowed))
        if wrong:
            raise StudyError(f"per_regime.{regime} sets {', '.join(wrong)}, which a regime cannot vary; it may "
                             f"set: {', '.join(allowed)}.")


def parse_list(value, cast=str) -> list:
    if isinstance(value, (list, tuple)):
        return [cast(v) for v in value]
    try:
        return [cast(v.strip()) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"Could not read {value!r} as a comma-separated list of {cast.__name__} values.") from None


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value where it parses (numbers, lists, dicts, true/false), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise StudyError(f"The override {text!r} is malformed; write it as key=value, e.g. temperature=2.")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def lookup(registry_like: dict, name: str, axis: str) -> dict:
    if name not in registry_like:
        raise StudyError(f"Unknown {axis} {name!r}; valid {axis}s are: {', '.join(registry_like)}.")
    return registry_like[name]


def preset_for(dataset: str | None, preset: str | None, default: str) -> str:
    """The preset to train with: the one named, else the dataset's own, else ``default`` (a space's, when no
    dataset is named). A dataset without a preset needs one named: another dataset's protocol (its teacher,
    batch, width) is never applied to it silently."""
    if preset:
        lookup(PRESETS, preset, "preset")
        return preset
    if not dataset:
        return default
    own = [name for name, p in PRESETS.items() if dataset in (name, p["dataset"])]
    if own:
        return own[0]
    from study.core.data import DATASETS

    DATASETS.resolve(dataset)  # an unknown dataset is refused as such
    raise StudyError(f"The dataset {dataset!r} has no preset; name the protocol to train it with, "
                     f"e.g. --preset {default} (presets: {', '.join(PRESETS)}).")


def preset_protocol(preset: str, dataset: str | None = None, data_root: str | None = None) -> dict:
    """What a preset fixes for every cell (:data:`PROTOCOL_FIELDS`), on ``dataset`` if given."""
    p = lookup(PRESETS, preset, "preset")
    protocol = {k: p[k] for k in PROTOCOL_FIELDS if k in p}
    if dataset:
        protocol["dataset"] = dataset
    protocol["data_root"] = data_root
    return protocol


def apply_overrides(protocol: dict, overrides: list[str] | None, spec_fields: tuple[str, ...] = ()
                    ) -> tuple[dict, dict, dict]:
    """``key=value`` overrides on a protocol: (the protocol, selector name -> its parameters, the study
    settings among ``spec_fields``). Study commands and study.run read --set through here, so it means the
    same in both."""
    protocol, extra, params = dict(protocol), {}, {}
    for key, value in map(parse_override, overrides or []):
        head, _, sub = key.partition(".")
        if head == "selector_params":
            name, _, param = sub.partition(".")
            if not (name and param):
                raise StudyError(f"The override {key!r} is malformed; write it as selector_params.SELECTOR.PARAM=value, "
                                 f"e.g. selector_params.dm.iterations=200.")
            params.setdefault(name, {})[param] = value
        elif head in PROTOCOL_FIELDS:
            if sub:
                protocol[head] = {**protocol.get(head, {}), sub: value}
            else:
                protocol[head] = value
        elif key in spec_fields:
            extra[key] = value
        else:
            valid = ", ".join(PROTOCOL_FIELDS + ("selector_params.SELECTOR.PARAM",) + spec_fields)
            raise StudyError(f"Unknown override {key!r}; overridable settings are: {valid}.")
    return protocol, params, extra


def every_selector(names: list[str], teacher: dict) -> list[str]:
    """What ``all`` means: every registered selector that can run here. ``full`` is the reference, ``external``
    needs a PATH, and a selector that needs a BatchNorm teacher (sre2l) joins only when the teacher has one."""
    from study.selection import SELECTORS

    spec = TeacherSpec(**teacher)
    return [n for n in names if n not in ("full", "external") and teacher_fits(SELECTORS.get(n), spec)]


def overridden(overrides: list[str] | None) -> set[str]:
    """The settings ``key=value`` overrides name (``model_kwargs`` for ``model_kwargs.width=64``)."""
    return {parse_override(o)[0].partition(".")[0] for o in overrides or []}


def without_overridden(per_regime: dict, named: set[str]) -> dict:
    """``per_regime`` less every setting the user set explicitly: an explicit setting holds in every regime."""
    return {regime: {k: v for k, v in settings.items() if k not in named} for regime, settings in per_regime.items()}


@functools.lru_cache(maxsize=16)
def class_count(dataset: str, data_root: str | None) -> int:
    """The dataset's classes, read once per process (a dry run and the study it checks load it once)."""
    from study.core.data import class_count as count

    return count(dataset, data_root)


STUDY_SETTINGS = ("num_samples", "metric", "mode", "full_data_reference", "references")


def resolve_spec(space: str = "quick", preset: str | None = None, dataset: str | None = None,
                 selectors=None, ipc=None, regimes=None, budgets=None, seeds: int | None = None,
                 overrides: list[str] | None = None, data_root: str | None = None,
                 all_selectors: list[str] | None = None, base: dict | None = None) -> StudySpec:
    """Merge space, preset and overrides into a StudySpec (no data is touched here, but for the number of classes
    where the preset counts budgets in epochs). ``base`` is a resolved spec (a study's study_spec.json, or
    --print-config's output) to start from instead of space and preset."""
    if base is not None:
        refuse_preset_with_config(preset, dataset)
        spec = spec_from_dict(base)
        s = {"kind": spec.kind, "selectors": spec.selectors, "ipc": spec.ipc, "regimes": spec.regimes,
             "budgets": spec.budgets, "seeds": spec.seeds}
        protocol = {**spec.protocol, **({"data_root": data_root} if data_root is not None else {})}
        space, preset = spec.space, spec.preset
    else:
        s = dict(lookup(SPACES, space, "space"))
        preset = preset_for(dataset, preset, s["preset"])
        protocol, spec = preset_protocol(preset, dataset, data_root), None
    protocol, params, extra = apply_overrides(protocol, overrides, STUDY_SETTINGS)
    chosen = selectors if selectors is not None else s["selectors"]
    if chosen == "all" or chosen == ["all"]:
        chosen = every_selector(all_selectors or ["random"], protocol.get("teacher", {}))
    axes = dict(
        space=space, kind=s["kind"], preset=preset, protocol=protocol,
        selectors=parse_list(chosen), ipc=parse_list(ipc if ipc is not None else s["ipc"], int),
        regimes=parse_list(regimes if regimes is not None else s["regimes"]),
        budgets=parse_list(budgets if budgets is not None else s["budgets"] if "budgets" in s
                           else PRESETS[preset]["budgets"], int),
        seeds=int(seeds if seeds is not None else s["seeds"]))
    if spec is not None:
        for name, value in params.items():
            params[name] = {**spec.selector_params.get(name, {}), **value}
        spec = replace(spec, **axes, selector_params={**spec.selector_params, **params},
                       per_regime=without_overridden(spec.per_regime, overridden(overrides)))
    else:
        p = PRESETS[preset]
        unit = p.get("budget_unit", "steps")
        if unit not in BUDGET_UNITS:
            raise StudyError(f"The preset {preset!r} counts budgets in {unit!r}; a budget is in steps or epochs.")
        per_regime = without_overridden(p.get("per_regime", {}), overridden(overrides))
        check_per_regime(per_regime)
        spec = StudySpec(
            **axes, full_data_reference=s.get("full_data_reference", True), search=s.get("search", {}),
            num_samples=s.get("num_samples", 1), metric=s.get("metric", "val_acc_mean"), mode=s.get("mode", "max"),
            selector_params=params, references=parse_list(s.get("references", [])),
            selector_grid=s.get("selector_grid", {}), budget_unit=unit, per_regime=per_regime,
            classes=class_count(protocol["dataset"], data_root) if unit == "epochs" else None)
    for key, value in extra.items():
        setattr(spec, key, parse_list(value) if key == "references" else value)
    return spec


def refuse_preset_with_config(preset: str | None, dataset: str | None) -> None:
    if preset or dataset:
        raise StudyError("--config already fixes the dataset and its protocol; drop --preset / --dataset "
                         "(--set dataset=NAME trains the same protocol on another dataset).")


def spec_from_dict(d: dict) -> StudySpec:
    """A StudySpec from its JSON form (``StudySpec.to_dict``, as study_spec.json holds it); settings added since
    a file was written take their defaults, and a setting the spec does not have is refused."""
    names = [f.name for f in fields(StudySpec)]
    unknown = sorted(set(d) - set(names))
    missing = sorted(f.name for f in fields(StudySpec) if f.name not in d and f.default is MISSING
                     and f.default_factory is MISSING)
    if unknown or missing:
        raise StudyError(f"This study spec has unknown setting(s) {unknown} and lacks {missing}; a study spec has: "
                         f"{', '.join(names)}.")
    return StudySpec(**d)


def check_selector_params(params: dict, running: list[str]) -> None:
    """``params`` (selector name -> its parameters) must name selectors that run, with parameters they take."""
    from study.selection import build_selector

    for name, values in params.items():
        if name not in running:
            raise StudyError(f"Parameters were set for the selector {name!r}, which does not run here (selectors "
                             f"run: {', '.join(dict.fromkeys(running))}).")
        build_selector(name, **values)  # a selector refuses its own bad parameters in one sentence


def resolve_cell(selector: str | None = None, ipc: int | None = None, regime: str | None = None,
                 steps: int | None = None, seeds: int | None = None, preset: str | None = None,
                 dataset: str | None = None, data_root: str | None = None, overrides: list[str] | None = None,
                 base: dict | None = None) -> TrialConfig:
    """One trial's config from a command line (study.run, study.export): the cell that a study with the same
    preset and ``overrides`` runs, through the same :func:`resolve_spec` and :meth:`StudySpec.cell`. What the
    command line leaves out comes from DEFAULT_CELL and the preset (its first budget). ``base`` is a resolved
    trial config (config.json, a record, --print-config's output): the flags and ``overrides`` then change
    single settings of it, and nothing of a preset applies again."""
    if base is not None:
        refuse_preset_with_config(preset, dataset)
        return changed_config(base, selector, ipc, regime, steps, seeds, data_root, overrides)
    chosen = {"selector": selector, "ipc": ipc, "regime": regime, "seeds": seeds}
    cell = {**DEFAULT_CELL, **{k: v for k, v in chosen.items() if v is not None}}
    if cell["selector"] == "full":
        cell["ipc"] = FULL_DATA_IPC
    preset = preset_for(dataset, preset, DEFAULT_PRESET)
    budget = steps if steps is not None else PRESETS[preset]["budgets"][0]
    spec = resolve_spec("quick", preset, dataset, [cell["selector"]], [cell["ipc"]], [cell["regime"]], [budget],
                        cell["seeds"], overrides, data_root)
    check_selector_params(spec.selector_params, [cell["selector"]])
    if steps is not None:
        spec.budget_unit = "steps"  # --steps counts steps, whatever the preset's unit
    # under epoch budgets a full-data cell sees what the subset cell at --ipc sees (StudySpec.reference_cells)
    matched = (ipc or DEFAULT_CELL["ipc"]) if cell["selector"] == "full" and spec.budget_unit == "epochs" else None
    return spec.cell(cell["selector"], cell["ipc"], cell["regime"], budget, matched_ipc=matched)


def changed_config(base: dict, selector, ipc, regime, steps, seeds, data_root, overrides) -> TrialConfig:
    """A resolved config with single settings changed; the selector's parameters go when the selector does."""
    cell = dict(base)
    if selector is not None and selector != cell.get("selector"):
        cell["selector_params"] = {}
    chosen = {"selector": selector, "ipc": ipc, "regime": regime, "steps": steps, "seeds": seeds,
              "data_root": data_root}
    cell.update({k: v for k, v in chosen.items() if v is not None})
    protocol, params, _ = apply_overrides({k: cell[k] for k in PROTOCOL_FIELDS if k in cell}, overrides)
    name = cell.get("selector", DEFAULT_CELL["selector"])
    selector_params = {**cell.get("selector_params", {}), **params.get(name, {})}
    check_selector_params({**params, name: selector_params}, [name])
    if name == "full":
        cell["ipc"] = FULL_DATA_IPC
    if "batch_size" in protocol:
        protocol["batch_size"] = batch_size_for(protocol["batch_size"], cell.get("ipc", DEFAULT_CELL["ipc"]))
    return TrialConfig.from_dict({**cell, **protocol, "selector_params": selector_params})


# How a searched parameter is drawn (trainables.tune_study maps each to an Optuna distribution): a range
# (``low``, ``high``), or listed ``choices``, unordered (categorical) or ordered, so that TPE learns from a
# choice's neighbours (ordered: the search runs over the list's positions).
SEARCH_TYPES = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "int": ("low", "high"),
                "categorical": ("choices",), "ordered": ("choices",)}
LISTED_SEARCH_TYPES = ("categorical", "ordered")


def check_search(search: dict) -> None:
    for key, dist in search.items():
        kind = dist.get("type") if isinstance(dist, dict) else None
        if kind not in SEARCH_TYPES:
            raise StudyError(f"The search over {key} needs a type: one of {', '.join(SEARCH_TYPES)}, not {kind!r}.")
        missing = [field for field in SEARCH_TYPES[kind] if field not in dist]
        if missing or (kind in LISTED_SEARCH_TYPES and not dist["choices"]):
            raise StudyError(f"The {kind} search over {key} needs {' and '.join(SEARCH_TYPES[kind])}.")


def validate_spec(spec: StudySpec, smallest_class: int | None = None) -> None:
    """Check every cell before any compute; ``smallest_class`` comes from loading the dataset once."""
    if not (spec.selectors and spec.ipc and spec.regimes and spec.budgets):
        raise StudyError("A study needs at least one selector, IPC, regime and budget.")
    check_selector_params(spec.selector_params, spec.selectors + spec.references)
    sizes = {spec.protocol["dataset"]: smallest_class} if smallest_class else None
    for cfg in spec.cells():
        validate_trial(cfg, sizes)
    check_search(spec.search)
    if spec.kind == "optuna" and spec.num_samples < 1:
        raise StudyError(f"num_samples must be at least 1, not {spec.num_samples}.")
