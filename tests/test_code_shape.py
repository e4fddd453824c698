"""The code stays easy to pick up: short functions, short modules, and no pointers to documents that
are not in the repository."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted([*ROOT.glob("zoo/**/*.py"), *ROOT.glob("export/*.py"), *ROOT.glob("handlers/*.py"), ROOT / "cli.py"])
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 350
# The sentence a long module's docstring starts its explanation with.
LONG_MODULE_NOTE = "Longer than 350 lines"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in LIBRARY:
        for fn in _functions(ast.parse(path.read_text())):
            start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            if fn.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - start + 1} lines)")
    assert not long, "\n".join(long)


def test_no_module_is_longer_than_350_lines_unless_its_docstring_says_why():
    long = []
    for path in LIBRARY:
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_MODULE_LINES and LONG_MODULE_NOTE not in doc:
            long.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert not long, "\n".join(long)


def test_code_and_tests_cite_only_documents_in_the_repository():
    # Built from parts, so this file does not match itself.
    outside = re.compile("design" + r"\.md|" + "Done" + " when")
    files = LIBRARY + sorted(ROOT.glob("tests/**/*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if outside.search(line)]
    assert not hits, hits
