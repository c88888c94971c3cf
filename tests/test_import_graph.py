"""The package's layering, read from the source: no import cycles, and the engine and the run loop
free of NVFlare and Ray (so that every runner, federated or not, can share them)."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "custom" / "fedseg"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.Module, top_level_only: bool) -> list[ast.AST]:
    """The statements that run: ``if TYPE_CHECKING:`` blocks (annotations only) left out."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        out.append(node)
        if not top_level_only:
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    nodes = _runtime_nodes(ast.parse(path.read_text()), top_level_only)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p, top_level_only=top_level_only) if i in modules} - {m}
            for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_back_even_lazily():
    # Lazy imports (inside functions) count: a cycle through them is still a tangle of responsibilities.
    # A package importing its own submodules (fedseg.tasks -> fedseg.tasks.spleen) is not a cycle.
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in _graph(top_level_only=False).items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_engine_and_the_run_loop_import_neither_nvflare_nor_ray():
    for folder in ("engine", "training"):
        for path in (PACKAGE / folder).rglob("*.py"):
            heavy = {i for i in _imports(path, top_level_only=False) if i.split(".")[0] in ("nvflare", "ray")}
            assert not heavy, f"{path.relative_to(REPO)} imports {sorted(heavy)}"
