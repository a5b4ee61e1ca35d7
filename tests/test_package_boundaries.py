"""Cross-package rules: dependencies point one way (train → pipelines → kernels), kernels needs only torch."""

import ast
import pathlib

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"sparge-kernels": "sparge_kernels", "sparge-pipelines": "sparge_pipelines", "sparge-train": "sparge_train"}
# What each package may import from the project.
ALLOWED = {
    "sparge_kernels": {"sparge_kernels"},
    "sparge_pipelines": {"sparge_kernels", "sparge_pipelines"},
    "sparge_train": {"sparge_kernels", "sparge_pipelines", "sparge_train"},
}


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("dist,module", PACKAGES.items())
def test_imports_point_one_way(dist, module):
    src = ROOT / "packages" / dist / "src" / module
    files = list(src.rglob("*.py"))
    assert files, f"no sources under {src}"
    for path in files:
        project_imports = {m for m in _imported_roots(path) if m in ALLOWED}
        forbidden = project_imports - ALLOWED[module]
        assert not forbidden, f"{path.relative_to(ROOT)} imports {forbidden}"


def test_kernels_runtime_dependency_is_torch_only():
    meta = tomllib.loads((ROOT / "packages/sparge-kernels/pyproject.toml").read_text())
    assert [d.split(">")[0].split("=")[0].strip() for d in meta["project"]["dependencies"]] == ["torch"]
    imported = set()
    for path in (ROOT / "packages/sparge-kernels/src/sparge_kernels").rglob("*.py"):
        imported |= _imported_roots(path)
    stdlib = set(__import__("sys").stdlib_module_names)
    third_party = {m for m in imported if m not in stdlib and m != "sparge_kernels" and not m.startswith("_")}
    assert third_party <= {"torch", "triton"}, third_party


@pytest.mark.parametrize("dist", PACKAGES)
def test_each_package_is_versioned_and_documented(dist):
    pkg = ROOT / "packages" / dist
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())
    assert meta["project"]["name"] == dist
    assert (pkg / "README.md").is_file()
    version = {}
    exec((pkg / "src" / PACKAGES[dist] / "_version.py").read_text(), version)
    assert version["__version__"].count(".") == 2
