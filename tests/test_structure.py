"""The package's structure rules, checked on the source: one owner for each file format, model
files that stand alone, and inference that does not depend on training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from msakit import runfolder

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "msakit"
MODELS = PACKAGE / "models"
#: Not model files: the registry and the shared base (``_``-prefixed files are helpers too).
MODEL_PACKAGE_SHARED = {"__init__", "base"}

RUN_FOLDER_OWNER = PACKAGE / "runfolder"
RUN_FOLDER_FILES = {
    runfolder.CONFIG_FILE, runfolder.DATA_FILE, runfolder.ENV_FILE, runfolder.EXPERIMENT_FILE,
    runfolder.METRICS_FILE, runfolder.RESULTS_CSV, runfolder.RESULTS_MD, runfolder.EPOCHS_FILE,
    runfolder.PREDICTIONS_FILE, runfolder.ARTIFACTS_FILE, runfolder.ERROR_FILE,
    runfolder.EVALUATION_FILE, runfolder.BEST_WEIGHTS, runfolder.BEST_METADATA,
    runfolder.LEGACY_BEST_CHECKPOINT, runfolder.LAST_CHECKPOINT,
}
EXPORT_OWNER = PACKAGE / "pretrained.py"
#: An exported model folder has a ``metrics.json`` of its own, which its owner names.
EXPORT_FILES = {"model.safetensors", "feature_spec.json", "config.json", "metrics.json"}
#: Loads Hugging Face model folders, whose config.json is not an export's.
LANGUAGE_MODEL_OWNER = PACKAGE / "lm.py"
INFERENCE_MODULES = ("msakit.predict", "msakit.pretrained", "msakit.serve")


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in ``path`` names (function-level imports too);
    ``from package import name`` counts ``package.name`` as well, since it may be a module."""
    found: set[str] = set()
    package = ""  # the package a relative import starts from
    if SRC in path.parents:
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _file_name_literals(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """String constants in ``path`` that are one of ``names`` or a path ending in one."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(node.value == n or node.value.endswith("/" + n) for n in names):
                hits.append((node.lineno, node.value))
    return hits


def test_no_model_file_imports_another_model_file():
    model_files = {p.stem for p in MODELS.glob("*.py")
                   if p.stem not in MODEL_PACKAGE_SHARED and not p.stem.startswith("_")}
    assert {"mult", "dmd", "self_mm", "mmiln"} <= model_files  # the scan sees the models
    offences = []
    for path in _sources(MODELS):
        if path.stem not in model_files:
            continue
        for module in _imported_modules(path):
            other = module.removeprefix("msakit.models.")
            if module.startswith("msakit.models.") and other.split(".")[0] in model_files:
                offences.append(f"{path.relative_to(SRC)} imports {module}")
    assert not offences, ("a model file imports another model file; shared pieces go to "
                          "msakit/modules/ or models/base.py: " + "; ".join(offences))


def test_run_folder_file_names_appear_only_in_their_owner():
    offences = []
    for path in _sources(PACKAGE):
        if RUN_FOLDER_OWNER in path.parents:
            continue
        names = RUN_FOLDER_FILES - ({runfolder.METRICS_FILE} if path == EXPORT_OWNER else set())
        offences += [f"{path.relative_to(SRC)}:{line} {value!r}"
                     for line, value in _file_name_literals(path, names)]
    assert not offences, ("run-folder file names outside msakit.runfolder (read and write "
                          "through it): " + "; ".join(offences))


def test_export_file_names_appear_only_in_their_owner():
    assert _file_name_literals(EXPORT_OWNER, EXPORT_FILES)  # the scan sees the owner's names
    offences = []
    for path in _sources(PACKAGE):
        if path == EXPORT_OWNER or RUN_FOLDER_OWNER in path.parents:
            continue
        names = EXPORT_FILES - {"metrics.json"}
        if path == LANGUAGE_MODEL_OWNER:  # a Hugging Face model folder's own config.json
            names -= {"config.json"}
        offences += [f"{path.relative_to(SRC)}:{line} {value!r}"
                     for line, value in _file_name_literals(path, names)]
    assert not offences, "export file names outside msakit.pretrained: " + "; ".join(offences)


def test_the_scans_find_what_they_look_for(tmp_path):
    """The literal and import scans are not vacuous: they see a planted offence."""
    planted = tmp_path / "planted.py"
    planted.write_text('def f(d):\n    """Reads epochs.csv."""\n    return d / "seed*/*/epochs.csv"\n')
    assert _file_name_literals(planted, RUN_FOLDER_FILES) == [(3, "seed*/*/epochs.csv")]
    importer = tmp_path / "importer.py"
    importer.write_text("def f():\n    from msakit.models.mult import text_states\n")
    assert "msakit.models.mult" in _imported_modules(importer)


def _msakit_imports_reachable_from(roots: tuple[str, ...]) -> dict[str, str]:
    """``{module: the module that first imports it}`` over every msakit module reachable from
    ``roots`` through imports anywhere in the files (function-level ones too)."""
    files = {_module_name(p): p for p in _sources(PACKAGE)}
    seen = {root: "" for root in roots}
    todo = list(roots)
    while todo:
        current = todo.pop()
        for module in _imported_modules(files[current]):
            if module in files and module not in seen:
                seen[module] = current
                todo.append(module)
    return seen


def test_inference_does_not_import_training():
    reached = _msakit_imports_reachable_from(INFERENCE_MODULES)
    assert "msakit.runfolder" in reached  # inference reads run folders through their owner
    training = {m: by for m, by in reached.items() if m.split(".")[:2] == ["msakit", "training"]}
    assert not training, ("inference reaches msakit.training: "
                          + "; ".join(f"{by} imports {m}" for m, by in training.items()))


@pytest.mark.parametrize("module", INFERENCE_MODULES)
def test_inference_modules_load_without_training(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith('msakit.training')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert result.stdout.strip() == "[]"


def test_pyproject_lists_each_dependency_once():
    import re

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python >= 3.11")
    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    for group, requirements in groups.items():
        names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements]
        twice = sorted({n for n in names if names.count(n) > 1})
        assert not twice, f"pyproject.toml [{group}] lists {twice} more than once"
