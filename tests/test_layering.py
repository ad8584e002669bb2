"""The dependency rule, checked on the source: distca_kernels <- parallel <- distca <- launch <-
benchmarks, and tests use benchmarks only where they test a benchmark script.

Every import statement of every module (at any depth, lazy imports in functions included)
is read from the AST, relative imports resolved. An edge from a lower layer to a higher one
fails, as does the model code importing `parallel` (strategies are injected into it) or a
module of distca/parallel looking code up by string (importlib)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["distca_kernels", "parallel", "distca", "launch", "benchmarks"]  # each may import only those before it
# the test modules of benchmark scripts themselves; every other test checks the product and
# must not lean on benchmark code (what both need lives in the product: parallel/comm_counter.py,
# distca_kernels/flash_attn/sm90_compile.py)
BENCHMARK_TESTS = {"test_benchmark_records.py", "test_benchmark_smoke.py", "test_cad_sim.py", "test_multigpu_scripts.py"}


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """Top-level package names a module imports (relative imports resolved to its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = package or path.relative_to(ROOT).parts[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(package if node.level else (node.module or "").split(".")[0])
    return out


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_no_upward_imports():
    bad = []
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in modules(layer):
            for name in imports_of(path) & above:
                bad.append(f"{path.relative_to(ROOT)} imports {name} (a higher layer)")
    assert not bad, "\n".join(bad)


def test_tests_use_benchmarks_only_to_test_them():
    bad = [f"{p.relative_to(ROOT)} imports benchmarks" for p in modules("tests")
           if p.name not in BENCHMARK_TESTS and "benchmarks" in imports_of(p)]
    assert not bad, "\n".join(bad)


def test_model_code_does_not_import_parallel():
    bad = [str(p.relative_to(ROOT)) for p in modules("distca/model") if "parallel" in imports_of(p)]
    assert not bad, f"model files import parallel (inject strategies instead): {bad}"


def test_no_string_lookups_of_code_in_the_trainer_or_parallel():
    bad = [str(p.relative_to(ROOT)) for layer in ("distca", "parallel") for p in modules(layer)
           if "importlib" in imports_of(p)]
    assert not bad, f"importlib in {bad}: import strategies and components directly"


def test_the_checker_sees_upward_edges(tmp_path):
    """The rule is only as good as the import reader: it must see lazy, relative and aliased
    imports."""
    src = ("import os\nfrom . import sibling\n"
           "def f():\n    import distca.train as t\n    from parallel.plan import ParallelPlan\n")
    probe = tmp_path / "probe.py"
    probe.write_text(src)
    assert imports_of(probe, package="distca_kernels") == {"os", "distca_kernels", "distca", "parallel"}


def test_no_top_level_package_shadows_a_known_one():
    """Our top-level packages must not take a name other installed packages use: a `kernels`
    of ours shadowed Hugging Face's `kernels`, which transformers imports."""
    ours = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert not ours & {"kernels", "utils", "models", "tests_utils", "triton", "torch"}, ours
