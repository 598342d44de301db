"""The package's shape: what an install puts on the path, and the import graph's direction.

These read the source tree and pyproject.toml; they are cheap and catch a drifting layout early.
"""

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
#: Repository folder -> the import name it installs as.
PACKAGE_ROOTS = {"ganno_lightning": "ganno_lightning", "envs": "ganno_lightning.envs",
                 "agents": "ganno_lightning.agents"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def source_modules() -> dict[str, Path]:
    """Every module of the installed package, by its import name."""
    modules = {}
    for folder, name in PACKAGE_ROOTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((name, *parts))] = path
    return modules


MODULES = source_modules()


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's own modules that ``name`` imports anywhere in its code (not in docstrings)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in {"ganno_lightning", "envs", "agents"})
    return found - {name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_pyproject_lists_every_package_and_maps_envs_and_agents_under_the_namespace():
    packages = sorted(name for name, path in MODULES.items() if path.name == "__init__.py")
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == packages
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"ganno_lightning.envs": "envs",
                                                            "ganno_lightning.agents": "agents"}


def test_no_code_imports_the_generic_top_level_names():
    offenders = {name: sorted(t for t in targets if t.split(".")[0] in {"envs", "agents"})
                 for name, targets in GRAPH.items()}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_nothing_imports_upward():
    """ganno_lightning never imports the env or meta-training packages; envs never imports agents."""
    def layer(module: str) -> int:
        return 2 if module.startswith("ganno_lightning.agents") else 1 if module.startswith("ganno_lightning.envs") else 0

    upward = {name: sorted(t for t in targets if layer(t) > layer(name)) for name, targets in GRAPH.items()}
    assert {name: t for name, t in upward.items() if t} == {}


def test_import_graph_has_no_cycles():
    def strongly_connected(graph):  # Tarjan's algorithm
        index, low, stack, on_stack, found = {}, {}, [], set(), []

        def visit(v):
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                found.append(component)

        for v in graph:
            if v not in index:
                visit(v)
        return found

    # A package's own __init__ importing its modules is how packages work; a module importing its
    # package's __init__ back makes the cycle, and that edge is the one counted.
    cycles = [sorted(c) for c in strongly_connected(GRAPH) if len(c) > 1]
    assert cycles == []


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_every_console_script_is_installed_and_also_runs_with_python_m(script):
    target = PYPROJECT["project"]["scripts"][script]
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert installed.get(script) == target, f"reinstall the package: {script} -> {installed.get(script)}"
    module = target.partition(":")[0]
    runnable = module.removesuffix(".main") if module.endswith(".main") else module
    result = subprocess.run([sys.executable, "-m", runnable, "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in (result.stdout + result.stderr).lower()


#: What each piece of shared machinery is recognised by, and its one home (issue #16).
ONE_HOME = {
    "os.replace(": ["ganno_lightning/files.py", "ganno_lightning/nos/search.py"],  # search: moves files aside
    "fsync(": ["ganno_lightning/files.py"],
    "load_digits(": ["ganno_lightning/examples/digits.py"],
    "OmegaConf.load(": ["ganno_lightning/config.py"],
    "ProcessPoolExecutor": [],
    "mp_context": [],
    "import_module(": ["ganno_lightning/imports.py", "ganno_lightning/_lazy.py",
                       "agents/evaluation/main.py"],  # main: its package's docstring for --help
    "reduce_boolean_decision": ["ganno_lightning/trials/curve.py",
                                "ganno_lightning/pbt/callback.py"],  # pbt: every rank skips a damaged donor alike
    "never logs it": ["ganno_lightning/trials/preflight.py"],  # the pre-flight fit of BOIL, PBT and NOS
}


@pytest.mark.parametrize("needle", sorted(ONE_HOME))
def test_shared_machinery_has_one_home(needle):
    """Config loading, atomic files, trial pools, curve stops, importers and digits live in one module each."""
    found = sorted(str(path.relative_to(ROOT)) for path in MODULES.values() if needle in path.read_text())
    assert found == sorted(ONE_HOME[needle])
