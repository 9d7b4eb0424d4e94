"""The import layers of DESIGN.md §2 for what import-linter cannot see (it analyses packages only):
the root modules' own imports, and cycles through them. `lint-imports` (.importlinter) checks the
packages; both run in CI."""
import ast
import subprocess
import sys

from conftest import REPO

PACKAGES = ("tools", "lifecycle", "defenses", "attacks", "architectures", "datasets", "accel", "utils")
ROOT_MODULES = ("main_MIA", "run_gan_attack", "model_training")
# What each root module may import from the project (its own layer and those below it).
ALLOWED = {
    "main_MIA": set(PACKAGES) | {"model_training", "utils"},
    "run_gan_attack": set(PACKAGES) | {"model_training", "utils"},
    "model_training": {"defenses", "attacks", "architectures", "datasets", "accel", "utils"},
}
PROJECT = set(PACKAGES) | set(ROOT_MODULES)


def test_root_holds_only_entry_points_engine_and_utils():
    """DESIGN.md §2: machinery lives in packages; a new root module must be placed in a layer here."""
    found = {p.stem for p in REPO.glob("*.py")}
    assert found == set(ROOT_MODULES), f"root modules outside the layers: {sorted(found - set(ROOT_MODULES))}"
    found_pkgs = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert found_pkgs == set(PACKAGES), f"packages outside the layers: {sorted(found_pkgs ^ set(PACKAGES))}"


def _module_name(path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_imports(path) -> set:
    """Project modules `path` imports, at any depth (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                mod = ".".join(package + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PROJECT or (REPO / f"{n.split('.')[0]}.py").exists()}
    return out


def all_modules() -> dict:
    files = sorted(REPO.glob("*.py"))  # every root module, listed in ROOT_MODULES or not
    for pkg in {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}:
        files += sorted((REPO / pkg).rglob("*.py"))
    return {_module_name(f): f for f in files}


def test_root_modules_import_only_downwards():
    for name in ROOT_MODULES:
        used = {m.split(".")[0] for m in project_imports(REPO / f"{name}.py")} - {name}
        assert used <= ALLOWED[name], f"{name}.py imports {sorted(used - ALLOWED[name])}, a layer above it"


def test_no_import_cycle_anywhere():
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        # an import of a name inside a module counts as importing that module
        graph[name] = {m if m in modules else m.rsplit(".", 1)[0] for m in project_imports(path)} & set(modules)
        graph[name].discard(name)
    # Tarjan's strongly connected components, iteratively (no recursion limit on deep graphs)
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"import cycles: {cycles}"


def test_planning_never_imports_torch():
    """run_exp.sh plans each configuration in its own process: the flag, identity and run-folder modules
    must stay standard-library only, or a 30-configuration dry run pays ~3 s of torch import each."""
    code = ("import sys; import lifecycle.plan, tools.sweep; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
