"""cli.py declares commands and calls one function each: no loops, branches or formatting of
results in a command, and no helpers beyond the few that every command shares."""

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "sdt_ray" / "cli.py"
SHARED = {"comma_list", "user_errors", "_log", "_elsewhere", "main"}  # the list helper, errors, output, clusters
SETUP_CALLS = {"_elsewhere", "set_s3_environment"}  # where the command runs; the S3 flags


def command_problems(source: str) -> list[str]:
    problems = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        if not any("command" in ast.unparse(d) for d in node.decorator_list):
            if node.name not in SHARED:
                problems.append(f"{node.name}: a helper in the CLI")
            continue
        body = [b for b in node.body if not isinstance(b, (ast.Import, ast.ImportFrom))
                and not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]  # docstring
        setup = [b for b in body if isinstance(b, ast.Expr) and isinstance(b.value, ast.Call)
                 and ast.unparse(b.value.func) in SETUP_CALLS]
        options = [b for b in body if isinstance(b, ast.Assign)]
        work = [b for b in body if b not in setup and b not in options]
        if any(isinstance(n, (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.JoinedStr)) for b in body for n in ast.walk(b)):
            problems.append(f"{node.name}: logic (a branch, loop or formatted string) in a command")
        if len(work) != 1:
            problems.append(f"{node.name}: {len(work)} calls besides options and setup (one expected)")
    return problems


def test_the_check_finds_logic_in_a_command():
    source = '''
@app.command()
def good(x: int = 1):
    """Doc."""
    from .m import run
    _elsewhere(ctx, None, None, False)
    options = Options(x=x)
    _log(run(options).describe())

@app.command()
def bad(x: int = 1):
    result = run(x)
    if result:
        _log(f"got {result}")

def helper():
    pass
'''
    assert command_problems(source) == ["bad: logic (a branch, loop or formatted string) in a command", "helper: a helper in the CLI"]


def test_cli_declares_commands_and_calls_one_function_each():
    assert command_problems(CLI.read_text(encoding="utf-8")) == []
