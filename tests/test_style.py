"""The code follows the project's lint and format rules (pyproject.toml), and the package's modules import each
other in one direction."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (it comes with the dev extra)")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    paths = ["src", "tests", "examples", "research", "benchmarks"]
    result = subprocess.run([RUFF, *command, *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


PACKAGE = ROOT / "src" / "codefusion_hf"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def lazy_exports() -> dict[str, str]:
    """The package's `_EXPORTS` (public name -> the module defining it), which `from codefusion_hf import X`
    imports on first use."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (exports,) = [
        node.value for node in tree.body if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_EXPORTS"
    ]
    return {name: f"{PACKAGE.name}.{module}" for name, module in ast.literal_eval(exports).items()}


def imported_modules(path: Path, modules: set[str], exports: dict[str, str]) -> set[str]:
    """The modules of the package that the module at `path` imports, at module level or inside functions (a function
    import hides a circle, it does not remove it); `if TYPE_CHECKING:` blocks, which never run, are left out."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    targets.add(submodule)
                elif base == PACKAGE.name and alias.name in exports:
                    targets.add(exports[alias.name])
                else:
                    targets.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {target for target in targets if target in modules and target != name}


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules, the first repeated at the end), or None."""
    done, path = set(), []

    def walk(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            if cycle := walk(target):
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := walk(module))), None)


def test_the_package_has_no_import_cycle():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    exports = lazy_exports()
    graph = {name: imported_modules(path, set(paths), exports) for name, path in paths.items()}
    assert "codefusion_hf.hub_codefusion" in graph["codefusion_hf.pipeline_codefusion"]  # the graph sees imports
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    cycle = import_cycle(graph)
    assert cycle is None, "the package's modules import each other in a circle: " + " -> ".join(cycle)
