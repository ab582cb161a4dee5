"""The repository keeps its promises: README commands are CI's, the core never imports napari."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _block_after(marker: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README.md has no bash block after {marker}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_readme_has_the_two_commands_and_ci_runs_the_second():
    (main,) = _block_after("<!-- main-command -->")
    (test,) = _block_after("<!-- test-command -->")
    assert "napari-hitl demo" in main and 'pip install -e ".[all]"' in main
    assert "pytest" in test and ".[all,testing]" in test
    assert "--run-slow" in test  # CI runs this command: it must not skip the slow tests
    if shutil.which("awk") is None:
        pytest.skip("awk is needed to check .ci/run's extraction")
    script = (REPO / ".ci" / "run").read_text()
    awk = re.search(r"cmd=\$\(awk '(.*?)' README.md\)", script)
    assert awk, ".ci/run must read the test command from README.md"
    got = subprocess.run(["awk", awk.group(1), str(REPO / "README.md")], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == test
    assert 'exec bash -c "$cmd"' in script


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_napari_or_qt():
    src = REPO / "src" / "napari_hitl"
    offenders = {}
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if rel.parts[0] == "napari" or rel.name == "cli.py":  # the UI package; the CLI starts it
            continue
        bad = _top_level_imports(path) & set(UI_MODULES)
        if bad:
            offenders[str(rel)] = sorted(bad)
    assert not offenders, f"core modules import UI packages: {offenders}"


def test_import_contract_with_import_linter():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[testing]')")
    out = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "broken" in out.stdout and "0 broken" in out.stdout, out.stdout[-2000:]


def test_core_import_stays_light():
    code = ("import sys, napari_hitl.project, napari_hitl.io, napari_hitl.cli, napari_hitl.prompts; "
            "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing the core pulled in {out.stdout.strip()}"


def test_torch_is_a_range_and_the_readme_commands_install_the_tested_release():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch,) = [d for d in meta["dependencies"] if d.startswith("torch")]
    assert ">=" in torch and "<" in torch and "==" not in torch, torch  # a user's torch in range stays
    assert meta["optional-dependencies"]["tested"] == ["torch==2.13.0"]
    assert "tested" in meta["optional-dependencies"]["all"][0]  # README's commands install .[all...]


def test_no_merge_conflict_markers_are_committed():
    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml", "*.toml", "*.cfg"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    marked = [f for f in files if (REPO / f).is_file()
              and re.search(r"^(<<<<<<< |>>>>>>> |=======$)", (REPO / f).read_text(errors="replace"), re.M)]
    assert not marked, f"merge conflict markers in {marked}"
