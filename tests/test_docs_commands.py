"""The commands in the docs are the commands the kit has.

Every fenced code block of README.md and docs/**/*.md is read for invocations of ``./train.sh``,
``./predict.sh`` (and its ``--catalog`` mode, whose options have their own help),
``./dashboard.sh`` and ``python bench/X.py``. Each option such a command uses (``--foo``,
``--foo=VALUE``, ``-p``) must appear in that program's ``--help``, asked once per program; each
``bench/X.py`` run and each ``--config configs/X.yaml`` named must exist, and so must every
``bench/X.py`` and ``configs/X.yaml`` the pages name anywhere. A broken command written on
purpose is caught (the last test).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from galaxylib.config import PROJECT_ROOT

DOC_FILES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
SCRIPTS = ("train.sh", "predict.sh", "dashboard.sh")
CATALOG_MODE = "predict.sh --catalog"
FENCE = re.compile(r"^\s*(```+|~~~+)")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
PYTHON = re.compile(r"(\S*/)?python(3(\.\d+)?)?")
BENCH = re.compile(r"bench/[\w.-]+\.py")
OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w.-]*")
# a voila / jupyter_server setting that dashboard.sh passes on as it is (its --help says so)
VOILA_SETTING = re.compile(r"--[A-Z]\w*\.\w+")
NAMED_FILE = re.compile(r"\b(?:bench/[\w-]+\.py|configs/[\w.-]+\.yaml)\b")


@dataclass
class Command:
    where: str  # file:line
    program: str  # train.sh, predict.sh, predict.sh --catalog, dashboard.sh or bench/X.py
    args: list[str]

    def __str__(self) -> str:
        runs = f"python {self.program}" if self.program.startswith("bench/") else f"./{self.program.split()[0]}"
        return f"{self.where}: {' '.join([runs, *self.args])}"


def code_lines(path: Path, text: str | None = None) -> list[tuple[str, str]]:
    """(file:line, line) for each logical line of the fenced code blocks (``\\`` continuations joined)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    name = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
    out, in_block, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and (in_block is None or fence.group(1).startswith(in_block)):
            in_block = None if in_block else fence.group(1)
            pending = ""
            continue
        if in_block is None:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((f"{name}:{start}", pending + line))
        pending = ""
    return out


def tokens(line: str) -> list[str]:
    """Shell words of a line, comments dropped; a whole-line comment is read as a command too
    (``# after ./train.sh --config ...``). ``a|b`` stays one word (a synopsis' alternatives), a
    pipe is a word of its own."""
    stripped = line.strip()
    text = stripped.lstrip("#") if stripped.startswith("#") else line
    try:
        lexer = shlex.shlex(text, posix=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:  # an unbalanced quote (a multi-line python -c "..."): plain words will do
        words = re.split(r"\s+#", text, maxsplit=1)[0].split()
    return words


def ends_command(word: str) -> bool:
    """A word that ends the command it follows: ``;``, ``&&``, ``|``, ``(...``, ``$(...``."""
    return word in SEPARATORS or word.startswith(("(", "$(", "`"))


def commands_in(path: Path, text: str | None = None) -> list[Command]:
    found = []
    for where, line in code_lines(path, text):
        words = tokens(line)
        for i, word in enumerate(words):
            name = word.rsplit("/", 1)[-1]
            if name in SCRIPTS and "/" in word:  # ./train.sh, srun ./train.sh, /path/to/predict.sh
                program, rest = name, words[i + 1 :]
            elif PYTHON.fullmatch(word) and i + 1 < len(words) and BENCH.fullmatch(words[i + 1]):
                program, rest = words[i + 1], words[i + 2 :]
            else:
                continue
            args, optional = [], 0  # inside [...] of a synopsis, `|` separates alternatives, not commands
            for word in rest:
                if not optional and ends_command(word):
                    break
                optional += len(word) - len(word.lstrip("[")) - (len(word) - len(word.rstrip("]")))
                arg = word.removesuffix(";").strip("[]")
                if arg and arg != "|":
                    args.append(arg)
                if word.endswith(";"):
                    break
            if program == "predict.sh" and any(a == "--catalog" or a.startswith("--catalog=") for a in args):
                program = CATALOG_MODE
            found.append(Command(where, program, args))
    return found


HELP_ARGS = {
    "train.sh": ["./train.sh", "--help"],
    "predict.sh": ["./predict.sh", "--help"],
    # `--catalog --help` would read --help as the catalogue's name; with a name, --help answers
    CATALOG_MODE: ["./predict.sh", "--catalog", "CATALOG", "--help"],
    "dashboard.sh": ["./dashboard.sh", "--help"],
}


@functools.cache
def help_text(program: str) -> str:
    """``PROGRAM --help``, run once per program from the repository root with this interpreter
    (so the scripts install nothing)."""
    args = HELP_ARGS.get(program) or [sys.executable, program, "--help"]
    run = subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )
    assert run.returncode == 0, f"{' '.join(args)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run.stdout


@functools.cache
def help_options(program: str) -> frozenset[str]:
    return frozenset(o.rstrip(".-") for o in OPTION.findall(help_text(program)))


def option_of(arg: str) -> str | None:
    """``--foo`` of ``--foo`` or ``--foo=VALUE``; ``-p``; None for a value (a path, ``-1``, ``-``)."""
    if re.match(r"--[A-Za-z]", arg):
        return arg.split("=", 1)[0]
    if re.fullmatch(r"-[A-Za-z]", arg):
        return arg
    return None


def is_placeholder(value: str) -> bool:
    """FILE.yaml, models/<run>, $CONFIG: a name for the reader to fill in, not a file of the kit."""
    stem = Path(value).stem
    return any(c in value for c in "<>$*{") or (stem.isupper() and stem.replace("_", "").isalpha())


def problems_of(command: Command) -> tuple[int, list[str]]:
    """(options checked, what is wrong with the command)."""
    if command.program.startswith("bench/") and not (PROJECT_ROOT / command.program).is_file():
        return 0, [f"{command}\n    {command.program} does not exist"]
    known, problems, checked = help_options(command.program), [], 0
    args = command.args
    for i, arg in enumerate(args):
        option = option_of(arg)
        if option is None:
            continue
        checked += 1
        if command.program == "dashboard.sh" and VOILA_SETTING.fullmatch(option):
            if "--Class.option=VALUE" not in help_text("dashboard.sh"):
                problems.append(f"{command}\n    {option}: dashboard.sh --help no longer passes --Class.option on")
            continue
        if option not in known:
            help_cmd = " ".join(HELP_ARGS.get(command.program, ["python", command.program, "--help"]))
            problems.append(f"{command}\n    {option} is not in `{help_cmd}`")
        if option == "--config":
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if value and not is_placeholder(value) and not (PROJECT_ROOT / value).is_file():
                problems.append(f"{command}\n    --config {value}: no such file in the repository")
    return checked, problems


def check(doc_files: list[Path], texts: dict[Path, str] | None = None) -> tuple[list[Command], int, list[str]]:
    """Every command of the pages: (the commands, the options checked, the problems)."""
    texts = texts or {}
    commands = [c for path in doc_files for c in commands_in(path, texts.get(path))]
    checked, problems = 0, []
    for command in commands:
        n, wrong = problems_of(command)
        checked += n
        problems += wrong
    return commands, checked, problems


def test_every_command_in_the_docs_uses_options_its_program_has():
    commands, checked, problems = check(DOC_FILES)
    programs = sorted({c.program for c in commands})
    print(f"{len(commands)} commands checked ({checked} options) in {len(DOC_FILES)} pages: {', '.join(programs)}")
    assert not problems, f"{len(problems)} command(s) in the docs disagree with the CLI:\n" + "\n".join(problems)
    # the extraction finds what the pages hold: each program, and both modes of predict.sh
    assert {"train.sh", "predict.sh", CATALOG_MODE, "dashboard.sh"} <= set(programs), programs
    assert any(p.startswith("bench/") for p in programs), programs
    assert len(commands) >= 30 and checked >= 60, (len(commands), checked)


def test_every_bench_script_and_config_the_docs_name_exists():
    named, missing = set(), []
    for path in DOC_FILES:
        for match in NAMED_FILE.finditer(path.read_text(encoding="utf-8")):
            name = match.group(0)
            named.add(name)
            if not is_placeholder(name) and not (PROJECT_ROOT / name).is_file():
                missing.append(f"{path.relative_to(PROJECT_ROOT)}: {name}")
    print(f"{len(named)} bench scripts and configs named")
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)
    assert len(named) >= 10


def test_a_broken_command_in_a_page_is_caught(tmp_path):
    page = tmp_path / "broken.md"
    text = (
        "# A page\n\nSome prose, then a block of commands gone wrong:\n\n```bash\n"
        "./train.sh --config configs/quick.yaml --no-such-flag   # a comment --not-checked\n"
        "# then ./train.sh --config configs/quick.yaml --a-flag-in-a-comment-line\n"
        "./train.sh --config configs/no-such-config.yaml -q\n"
        "./predict.sh --model models/<run> --catalog survey.parquet --out out/ \\\n"
        "    --shard 1/4 --no-such-catalog-flag\n"
        "./predict.sh --model models/<run> cutout.jpg --shard 1/4   # a --catalog option without --catalog\n"
        "./predict.sh --model M --catalog C --out O [--dask local:N | --no-such-alternative] | tee log --not-it\n"
        "./train.sh --config configs/quick.yaml && echo --not-an-option; ./train.sh --run-name x; ls --neither\n"
        "./dashboard.sh --port 9000 --no-such-dashboard-flag\n"
        ".venv/bin/python bench/bench_catalog.py --only memory --no-such-bench-flag\n"
        "python bench/no_such_bench.py --n 3\n"
        "```\n"
    )
    commands, _, problems = check([page], {page: text})
    report = "\n".join(problems)
    for expected in (
        "--no-such-flag is not in `./train.sh --help`",
        "--a-flag-in-a-comment-line is not in `./train.sh --help`",
        "--config configs/no-such-config.yaml: no such file",
        "-q is not in `./train.sh --help`",
        "--no-such-catalog-flag is not in `./predict.sh --catalog CATALOG --help`",
        "--shard is not in `./predict.sh --help`",
        "--no-such-alternative is not in `./predict.sh --catalog CATALOG --help`",
        "--no-such-dashboard-flag is not in `./dashboard.sh --help`",
        "--no-such-bench-flag is not in `python bench/bench_catalog.py --help`",
        "bench/no_such_bench.py does not exist",
    ):
        assert expected in report, f"{expected!r} not reported:\n{report}"
    assert len(problems) == 10, report
    for other in ("--not-checked", "--catalog option", "--not-it", "--not-an-option", "--neither"):
        assert f"{other} is not" not in report  # a comment or another program's option
    # the continued line is one command, in the catalogue mode, at the line it starts on
    (joined,) = [c for c in commands if "--no-such-catalog-flag" in c.args]
    first = text.splitlines().index("./predict.sh --model models/<run> --catalog survey.parquet --out out/ \\") + 1
    assert joined.program == CATALOG_MODE and joined.where.endswith(f":{first}")
