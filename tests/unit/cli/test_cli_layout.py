"""The console scripts live in ``recognizer.cli``, thin; the library never imports them."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "recognizer"
CLI = PACKAGE / "cli"
MAX_LINES = 120


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: script name → ``module:function`` (no tomllib on Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("\n[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, re.MULTILINE))


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports included), relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).parent.parts)  # what `from . import x` is relative to
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from recognizer import cli`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_console_script_is_a_callable_in_recognizer_cli() -> None:
    scripts = console_scripts()
    assert len(scripts) == 9 and all(name.startswith("recognizer-") for name in scripts)
    for name, target in scripts.items():
        module_name, _, attr = target.partition(":")
        assert module_name.startswith("recognizer.cli."), f"{name} = {target} is not in recognizer.cli"
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), f"{name}: {target} is not callable"


def test_every_cli_module_is_a_console_script() -> None:
    targets = {target.partition(":")[0] for target in console_scripts().values()}
    modules = {f"recognizer.cli.{p.stem}" for p in CLI.glob("*.py") if p.name != "__init__.py"}
    assert modules == targets


def test_the_library_never_imports_the_cli() -> None:
    library = [p for p in sorted(PACKAGE.rglob("*.py")) if CLI not in p.parents]
    assert len(library) > 20
    for path in library:
        bad = {m for m in imported_modules(path) if m == "recognizer.cli" or m.startswith("recognizer.cli.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_cli_modules_are_thin() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) == 10  # __init__ and one per command
    for path in modules:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines < MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES - 1})"


def test_cli_modules_import_no_other_command() -> None:
    """Entry points do not import each other: each reaches the library only."""
    for path in sorted(CLI.glob("*.py")):
        own = f"recognizer.cli.{path.stem}"
        others = {m for m in imported_modules(path) if m.startswith("recognizer.cli.") and m != own}
        assert not others, f"{path.relative_to(ROOT)} imports {sorted(others)}"


def test_the_library_reads_no_config_file() -> None:
    """Only the commands compose ``recognizer/conf/`` (Hydra); the library takes plain arguments and reads
    its shipped data files as package resources (``recognizer.resources``)."""
    library = [p for p in sorted(PACKAGE.rglob("*.py")) if CLI not in p.parents and p != PACKAGE / "__init__.py"]
    for path in library:
        names = {n.id for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Name)}
        imports = imported_modules(path)
        assert "CONFIG_DIR" not in names and "recognizer.CONFIG_DIR" not in imports, (
            f"{path.relative_to(ROOT)} reads the config tree"
        )


def test_no_library_function_is_longer_than_60_lines_of_code() -> None:
    """Orchestration reads top to bottom: every function fits a screen (its docstring not counted)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]  # the docstring
            lines = (body[-1].end_lineno or 0) - body[0].lineno + 1
            if lines > 60:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split these functions: " + "; ".join(too_long)
