"""Configuration is read one way, checked on the source with `ast`:

- the environment is read (`load_settings()`, `os.environ`, `os.getenv`) only where a
  process is assembled: the CLI's group, the receiver's app factory, the Dagster code
  location's definitions, the settings module itself, and the few places listed in
  ALLOWED with the reason; everything else gets its settings passed in;
- no function memoised for the life of the process (`functools.cache`, `lru_cache`,
  `cached_property` on a module-level function) hands out settings or encryption keys:
  which key decrypts a shop's secrets is decided by whoever opens the database
  (`Database(box=...)`), never by a hidden process-wide value.

Each allowance must still be needed (a stale one fails).
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCT = ("lead_orchestrator", "orchestrator_dagster", "webhook_receiver")

ENTRY_POINTS = {
    "lead_orchestrator/settings.py": "defines load_settings",
    "lead_orchestrator/cli/main.py": "the CLI group loads the settings once per command",
    "webhook_receiver/main.py": "uvicorn's factory call (create_app with no arguments)",
    "orchestrator_dagster/definitions.py": "the code location loads the settings once",
}
ALLOWED = {
    "lead_orchestrator/runtime/stack.py": "hands its own environment on to the children it starts",
    "orchestrator_dagster/alerts.py": "optional alert settings become EnvVar only when the variable is set",
    "orchestrator_dagster/resources.py": "TEKMETRIC_BASE_URL as the process running the code finds it",
}

MEMOISERS = {"cache", "lru_cache", "cached_property"}
KEY_TYPES = {"Settings", "SecretBox"}


def _product_files():
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def _reads_environment(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv"):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_settings":
            return True
    return False


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def test_only_entry_points_read_the_environment():
    readers = {name for name, tree in _product_files() if _reads_environment(tree)}
    unexpected = readers - set(ENTRY_POINTS) - set(ALLOWED)
    assert not unexpected, f"settings must be passed in, not read here: {sorted(unexpected)}"
    stale = (set(ENTRY_POINTS) | set(ALLOWED)) - readers
    assert not stale, f"allowances no longer needed: {sorted(stale)}"


def test_no_process_wide_memo_hands_out_settings_or_keys():
    found = []
    for name, tree in _product_files():
        for node in tree.body:  # module-level functions only: a method's cache lives with its object
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.returns is None:
                continue
            memoised = any(_decorator_name(d) in MEMOISERS for d in node.decorator_list)
            returns = {n.id for n in ast.walk(node.returns) if isinstance(n, ast.Name)}
            returns |= {n.value for n in ast.walk(node.returns) if isinstance(n, ast.Constant)}
            if memoised and returns & KEY_TYPES:
                found.append(f"{name}:{node.lineno} {node.name}")
    assert not found, f"process-wide memo of settings or keys: {found}"


def test_the_checks_catch_what_they_are_for():
    assert _reads_environment(ast.parse("import os\nx = os.environ.get('A')"))
    assert _reads_environment(ast.parse("s = load_settings()"))
    assert not _reads_environment(ast.parse("def f(settings): return settings.public_base_url"))
    memo = ast.parse("@lru_cache(maxsize=1)\ndef default_box() -> SecretBox: ...").body[0]
    assert _decorator_name(memo.decorator_list[0]) == "lru_cache"
