"""Metrics for code generation: exact match, NL2Bash template match, BLEU, syntax validity, diversity, top-k."""

import ast
import os
import re
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import bashlex
import sacrebleu

# Model outputs can be long garbage; bashlex's parser is slow and memory-hungry on such input.
MAX_PARSE_CHARS = 1000
PARSE_TIMEOUT_SECONDS = 2.0


def normalise_code(code: str) -> str:
    """Collapse runs of whitespace: the form compared by exact match."""
    return " ".join(code.split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whitespace-normalised string equality."""
    return normalise_code(prediction) == normalise_code(reference)


@contextmanager
def _time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only work in the main thread; the length cap still applies
        return

    def timeout(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_bash(code: str) -> list | None:
    """bashlex parse trees of `code`, or None when it does not parse (or is too long or too slow to parse)."""
    if not code.strip() or len(code) > MAX_PARSE_CHARS:
        return None
    try:
        with _time_limit(PARSE_TIMEOUT_SECONDS):
            return bashlex.parse(code)
    except Exception:  # bashlex raises several error types, plus our TimeoutError
        return None


# Words kept verbatim in a template: `find -exec` terminators, the `{}` placeholder and test brackets are structure.
STRUCTURAL_WORDS = {"\\;", ";", "+", "{}", "]", "]]"}
# Flags whose next word is their argument, by utility. That word is abstracted when it is a negative number
# (`find -mtime -7`, `head -n -5`) and never taken for the command that xargs, sudo, ... run (`xargs -n 1 rm`,
# `sudo -u bob rm`); other words starting with `-` stay flags (`find -size -empty` is not `find -size 0`). Other
# flags take no argument here: in `comm -1 -2` and `ls -l -1` every word is a flag.
NEGATIVE_NUMBER = re.compile(r"-[0-9]+(\.[0-9]+)?[A-Za-z]?")
FLAG_ARGUMENTS = {
    "find": {
        "-amin",
        "-atime",
        "-cmin",
        "-ctime",
        "-gid",
        "-inum",
        "-links",
        "-maxdepth",
        "-mindepth",
        "-mmin",
        "-mtime",
        "-perm",
        "-size",
        "-uid",
        "-used",
    },
    "head": {"-c", "-n"},
    "tail": {"-c", "-n"},
    "nice": {"-n"},
    "renice": {"-n"},
    "xargs": {"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s"},
    "sudo": {"-g", "-u"},
    "env": {"-u"},
    "watch": {"-n"},
}

# Flags and utilities whose next non-flag word is itself a utility (`find -exec rm`, `xargs rm`, `sudo rm`).
RUNS_A_COMMAND = {
    "-exec",
    "-execdir",
    "-ok",
    "-okdir",
    "xargs",
    "sudo",
    "nohup",
    "time",
    "nice",
    "env",
    "exec",
    "watch",
}


def bash_template(code: str) -> str:
    """
    The NL2Bash template of a command: utilities, flags and structure kept, arguments abstracted.

    Rules:
    - the first word of each simple command (the utility) is kept, and so is the first non-flag word after a flag or
      utility that runs a command (`-exec`, `xargs`, `sudo`, ...);
    - words starting with `-` (flags), the `find -exec` words `\\;`, `+`, `{}` and test brackets `]`, `]]` are kept,
      except a negative number that is the argument of a flag listed in `FLAG_ARGUMENTS` for the utility
      (`find -mtime -7`, `head -n -5`), which becomes `ARG`; such a flag's argument is never taken for the command
      that xargs, sudo, ... run (`xargs -n 1 rm` runs `rm`);
    - every other word (file names, paths, patterns, numbers, quoted strings, variables) becomes `ARG`, except that
      command and process substitutions inside a word are expanded recursively;
    - pipes, operators (`&&`, `||`, `;`, `&`), redirections (operator kept, target abstracted), reserved words and
      compound commands are kept;
    - commands that do not parse fall back to their whitespace-normalised text.
    """
    trees = parse_bash(code)
    if trees is None:
        return normalise_code(code)
    tokens: list[str] = []

    def visit(node) -> None:
        kind = node.kind
        if kind == "command":
            utility, expects_utility, flag_argument = None, True, False
            for part in node.parts:
                if part.kind != "word":
                    visit(part)
                    flag_argument = False
                    continue
                word = part.word
                # The previous flag's argument: never a flag, nor the command that xargs, sudo, ... run.
                if flag_argument and NEGATIVE_NUMBER.fullmatch(word):
                    tokens.append("ARG")
                    flag_argument = False
                elif flag_argument and not (word.startswith("-") or word in STRUCTURAL_WORDS):
                    visit_word(part)
                    flag_argument = False
                elif expects_utility and not word.startswith("-") and "=" not in word.split("/")[0]:
                    tokens.append(word)
                    utility, expects_utility, flag_argument = word, word in RUNS_A_COMMAND, False
                else:
                    visit_word(part)
                    expects_utility = expects_utility or word in RUNS_A_COMMAND
                    flag_argument = word in FLAG_ARGUMENTS.get(utility, ())
        elif kind == "word":
            visit_word(node)
        elif kind in ("pipe", "operator"):
            tokens.append(node.pipe if kind == "pipe" else node.op)
        elif kind == "reservedword":
            tokens.append(node.word)
        elif kind == "redirect":
            tokens.append(node.type)
            if hasattr(node.output, "kind"):
                visit_word(node.output) if node.output.kind == "word" else visit(node.output)
            else:
                tokens.append("ARG")
        elif kind in ("commandsubstitution", "processsubstitution"):
            tokens.append("$(" if kind == "commandsubstitution" else "<(")
            visit(node.command)
            tokens.append(")")
        elif hasattr(node, "parts"):
            for part in node.parts:
                visit(part)
        elif hasattr(node, "list"):
            for part in node.list:
                visit(part)

    def visit_word(node) -> None:
        substitutions = [
            p for p in getattr(node, "parts", []) if p.kind in ("commandsubstitution", "processsubstitution")
        ]
        if node.word.startswith("-") or node.word in STRUCTURAL_WORDS:
            tokens.append(node.word)
        elif substitutions:
            for part in substitutions:
                visit(part)
        else:
            tokens.append("ARG")

    for tree in trees:
        visit(tree)
    return " ".join(tokens)


def template_match(prediction: str, reference: str) -> bool:
    """NL2Bash/CodeFusion template match: equal `bash_template`s (arguments abstracted)."""
    return bash_template(prediction) == bash_template(reference)


METRICS: dict[str, Callable[[str, str], bool]] = {"exact_match": exact_match, "template_match": template_match}

# The Excel conditional-formatting rule language of the CodeFusion benchmark, read off its training data:
# logical combinators of rules, text tests with a free-text argument, value tests with one or two values, and
# rules without arguments.
CF_LOGICAL = {"AND", "OR"}
CF_TEXT = {"TextEquals", "TextContains", "TextBeginsWith", "TextEndsWith", "TextNotContains"}
CF_ONE_VALUE = {"GreaterThan", "GreaterThanEqual", "LessThan", "LessThanEqual", "Equals", "NotEquals", "top", "bottom"}
CF_TWO_VALUES = {"Between", "NotBetween"}
CF_NO_ARGUMENTS = {
    "aboveAverage",
    "belowAverage",
    "ColorScale",
    "IconSet",
    "Duplicate",
    "Unique",
    "Blanks",
    "NoBlanks",
}
CF_VALUE = re.compile(r"\s*[^(),\s][^(),]*")


def _cf_rule_end(code: str, start: int) -> int | None:
    """Parse one CF rule at `start`; return the index after it, or None when it is not a valid rule."""
    match = re.compile(r"\s*([A-Za-z]+)\(").match(code, start)
    if match is None:
        return None
    name, position = match.group(1), match.end()
    if name in CF_LOGICAL or name == "NOT":
        while True:
            position = _cf_rule_end(code, position)
            if position is None:
                return None
            if code.startswith(",", position) and name != "NOT":
                position += 1
                continue
            break
    elif name in CF_TEXT:
        # Free text (possibly empty, possibly with balanced parentheses) up to the rule's closing parenthesis.
        close = _matching_close(code, match.end() - 1)
        return None if close is None else close + 1
    elif name in CF_ONE_VALUE or name in CF_TWO_VALUES:
        for index in range(1 if name in CF_ONE_VALUE else 2):
            if index and not code.startswith(",", position):
                return None
            value = CF_VALUE.match(code, position + index)
            if value is None:
                return None
            position = value.end()
    elif name not in CF_NO_ARGUMENTS:
        return None
    position = len(code) - len(code[position:].lstrip())
    return position + 1 if code.startswith(")", position) else None


def _matching_close(code: str, open_index: int) -> int | None:
    depth = 0
    for index in range(open_index, len(code)):
        depth += {"(": 1, ")": -1}.get(code[index], 0)
        if depth == 0:
            return index
    return None


def is_valid_excel_cf(code: str) -> bool:
    """Whether `code` is one rule of the Excel conditional-formatting language (see the CF_* sets above)."""
    end = _cf_rule_end(code, 0)
    return end is not None and not code[end:].strip()


def is_valid_syntax(code: str, language: str) -> bool:
    """Python: `ast.parse` succeeds; Bash: bashlex parses it; Excel CF: `is_valid_excel_cf`. Empty code is invalid."""
    if not code.strip():
        return False
    if language == "python":
        try:
            ast.parse(code)
            return True
        except (SyntaxError, ValueError):
            return False
    if language == "bash":
        return parse_bash(code) is not None
    if language == "excel":
        return is_valid_excel_cf(code)
    raise ValueError(f"Unknown language {language!r}: choose python, bash or excel.")


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenisation) of one prediction per reference, on a 0-100 scale."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length.")
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score


def code_tokens(code: str) -> list[str]:
    """Identifiers, numbers and single punctuation marks: `os.remove(f)` -> os . remove ( f )."""
    return re.findall(r"\w+|[^\w\s]", code)


def codebleu(predictions: Sequence[str], references: Sequence[str], language: str = "python") -> float:
    """Corpus CodeBLEU (Ren et al., 2020) of one prediction per reference, on a 0-100 scale: the mean of n-gram,
    keyword-weighted n-gram, syntax-tree and data-flow match, from the `codebleu` package and its tree-sitter grammar
    (the `codebleu` extra). Two departures from the package's own total: code is split by `code_tokens`, not at
    spaces, and a data-flow score of 0 counts as 0 (the package counts it as 1, which gives unrelated code 25
    points). Python only: the package has no Bash or Excel CF grammar."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length.")
    if language != "python":
        raise ValueError(f"CodeBLEU supports language='python' here, got {language!r} (no Bash or Excel grammar).")
    try:
        from codebleu import calc_codebleu
    except ImportError as error:
        raise ImportError("CodeBLEU needs the codebleu extra: pip install -e '.[codebleu]'.") from error
    scores = calc_codebleu(list(references), list(predictions), lang="python", tokenizer=code_tokens)
    parts = ("ngram_match_score", "weighted_ngram_match_score", "syntax_match_score", "dataflow_match_score")
    return 100 * sum(scores[part] for part in parts) / len(parts)


def distinct_n(candidates: Sequence[Sequence[str]], n: int) -> float | None:
    """Diversity among the k candidates of each prompt: distinct whitespace n-grams over all n-grams of the
    candidates, averaged over prompts (prompts whose candidates have no n-gram are left out). None when no prompt
    has one, e.g. distinct-2 of one-word code: undefined, not 0."""
    ratios = []
    for codes in candidates:
        grams = [
            tuple(tokens[i : i + n]) for tokens in (code.split() for code in codes) for i in range(len(tokens) - n + 1)
        ]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else None


def top_k_accuracy(
    candidates: Sequence[Sequence[str]], references: Sequence[str], metric: str | Callable[[str, str], bool], k: int
) -> float:
    """Share of prompts solved at k: any of the first k ranked candidates matches the reference. The ranking is the
    candidates' given order, which must not have looked at the reference."""
    solved = solved_at_k(candidates, references, metric, k)
    return sum(solved) / len(solved)


def solved_at_k(
    candidates: Sequence[Sequence[str]], references: Sequence[str], metric: str | Callable[[str, str], bool], k: int
) -> list[bool]:
    """For each prompt, whether any of its first k ranked candidates matches the reference (for paired tests)."""
    if len(candidates) != len(references):
        raise ValueError(f"candidates ({len(candidates)}) and references ({len(references)}) differ in length.")
    if not references:
        raise ValueError("references is empty: nothing to score.")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}: choose one of {sorted(METRICS)}.")
        metric = METRICS[metric]
    return [any(metric(c, ref) for c in cands[:k]) for cands, ref in zip(candidates, references)]


def metric_path(name: str) -> str:
    """Path of a metric shipped as a local `evaluate` module, for `evaluate.load(metric_path(name))` offline
    (the Hub versions of evaluate's metrics cannot be fetched without network)."""
    path = os.path.join(os.path.dirname(__file__), "evaluate_metrics", name, f"{name}.py")
    if not os.path.isfile(path):
        available = sorted(os.listdir(os.path.join(os.path.dirname(__file__), "evaluate_metrics")))
        raise ValueError(f"Unknown metric {name!r}: shipped metrics are {available}.")
    return path


__all__ = [
    "bash_template",
    "bleu",
    "code_tokens",
    "codebleu",
    "distinct_n",
    "exact_match",
    "is_valid_excel_cf",
    "is_valid_syntax",
    "metric_path",
    "normalise_code",
    "parse_bash",
    "solved_at_k",
    "template_match",
    "top_k_accuracy",
]
