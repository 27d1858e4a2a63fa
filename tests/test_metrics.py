import os

import pytest
from conftest import PAIRS

from codefusion_hf.metrics import (
    bash_template,
    bleu,
    code_tokens,
    codebleu,
    distinct_n,
    exact_match,
    is_valid_syntax,
    metric_path,
    parse_bash,
    template_match,
    top_k_accuracy,
)


def test_exact_match_normalises_whitespace():
    assert exact_match("ls  -la\n", "ls -la")
    assert not exact_match("ls -l", "ls -la")


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("find . -name '*.py'", 'find /home -name "*.txt"'),  # different arguments, same template
        ("ls -la /tmp | wc -l", "ls -la ~ | wc -l"),  # pipes
        ("find . -name x -exec rm {} \\;", "find /a -name y -exec rm {} \\;"),  # -exec ... \;
        ("ls > a.txt 2>&1", "ls > b.txt 2>&1"),  # redirections
        ("head -n 5 file", "head -n 10 other"),  # numbers
        ('grep -c "a b" x', "grep -c 'c' y"),  # quoting
        ("cat $(ls *.txt)", "cat $(ls /tmp)"),  # command substitution is expanded
        ("ls  -l", "ls -l"),
        ("find . -mtime -7", "find /tmp -mtime -30"),  # a flag's argument, even a negative number
        ("find . -mtime -7", "find . -mtime +7"),
        ("find . -size -10M", "find . -size 2k"),
        ("tail -n -5 a", "tail -n 20 b"),
        ("ls | xargs -n 1 rm", "ls | xargs -n 2 rm"),  # not `1` but `rm` is the command xargs runs
        ("sudo -u bob rm a", "sudo -u alice rm b"),
    ],
)
def test_template_match_pairs_that_match(prediction, reference):
    assert template_match(prediction, reference)


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("ls -l", "ls -la"),  # different flags
        ("ls -l", "dir -l"),  # different utility
        ("ls | wc -l", "ls ; wc -l"),  # different structure
        ("ls > a", "ls >> a"),  # different redirection
        ("find . -exec rm {} \\;", "find . -exec mv {} \\;"),  # the utility run by -exec
        ("cat $(ls a)", "cat a"),  # substitution vs plain argument
        ("find . -name x -exec rm {} \\;", "find . -name x -exec rm {} +"),
        ("ls -1", "ls -2"),  # flags that look like numbers
        ("kill -9 1", "kill -15 1"),
        ("comm -1 -2 a b", "comm -1 -3 a b"),  # ... also after a flag that takes no argument
        ("ls -l -1", "ls -l -2"),
        ("ls | xargs -n 1 rm", "ls | xargs -n 1 mv"),
        ("find . -size -empty", "find . -size 0"),  # a flag where the argument should be stays a flag
        ("find . -mtime +", "find . -mtime +5"),
        ("find . -amin -", "find . -amin -60"),
    ],
)
def test_template_match_pairs_that_differ(prediction, reference):
    assert not template_match(prediction, reference)


def test_templates():
    assert bash_template("find . -name '*.py' -exec rm {} \\;") == "find ARG -name ARG -exec rm {} ;"
    assert bash_template("ls -la /tmp > out.txt 2>&1") == "ls -la ARG > ARG >& ARG"
    assert bash_template("find . | xargs -0 grep -l foo") == "find ARG | xargs -0 grep -l ARG"
    assert bash_template("if [ -f a ]; then echo yes; fi") == "if [ -f ARG ] ; then echo ARG ; fi"


def test_unparsable_code_falls_back_to_text():
    assert parse_bash("ls 'unclosed") is None
    assert bash_template("ls   'unclosed") == "ls 'unclosed"
    assert template_match("ls 'unclosed", "ls  'unclosed") and not template_match("ls 'a", "ls 'b")
    assert parse_bash("x" * 5000) is None and parse_bash("") is None


def test_top_k_accuracy():
    candidates = [["ls -l", "ls -la"], ["df", "du"], ["pwd"]]
    references = ["ls -la", "du -h", "pwd"]
    assert top_k_accuracy(candidates, references, "exact_match", 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(candidates, references, "exact_match", 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(candidates, references, "template_match", 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(candidates, references, exact_match, 5) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "args, match",
    [
        (([["a"]], ["a", "b"], "exact_match", 1), "differ in length"),
        (([], [], "exact_match", 1), "empty"),
        (([["a"]], ["a"], "bleu", 1), "Unknown metric 'bleu'"),
        (([["a"]], ["a"], "exact_match", 0), "k must be"),
    ],
)
def test_top_k_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        top_k_accuracy(*args)


def test_bleu():
    assert bleu(["ls -la /tmp"], ["ls -la /tmp"]) == pytest.approx(100)
    assert bleu(["cat a"], ["ls -la /tmp"]) == pytest.approx(0)
    with pytest.raises(ValueError, match="differ in length"):
        bleu(["a"], [])


def test_code_tokens():
    assert code_tokens("os.remove(f_1)  # x") == ["os", ".", "remove", "(", "f_1", ")", "#", "x"]


def test_codebleu():
    pytest.importorskip("codebleu")
    references = ["os.remove(f)", "x = sorted(a, key=len)", "d = dict(zip(k, v))"]
    assert codebleu(references, references) == pytest.approx(100)
    assert codebleu([""] * 3, references) == 0  # no free data-flow points for empty or unrelated code
    renamed = codebleu(["os.remove(g)", "y = sorted(b, key=len)", "e = dict(zip(j, w))"], references)
    unrelated = codebleu(["import sys", "y = 1", "for i in r: pass"], references)
    assert 50 < renamed < 100 and unrelated < 10
    with pytest.raises(ValueError, match="language='python'"):
        codebleu(["ls"], ["ls"], language="bash")
    with pytest.raises(ValueError, match="differ in length"):
        codebleu(["a"], [])


def test_distinct_n():
    # prompt 1: unigrams ls,-l,ls,-l -> 2 distinct of 4; prompt 2: a,b,c,d -> 4 of 4; mean 0.75
    assert distinct_n([["ls -l", "ls -l"], ["a b", "c d"]], 1) == pytest.approx(0.75)
    # bigrams: (ls,-l) x2 -> 1/2; (a,b),(c,d) -> 2/2; mean 0.75; empty candidates are left out
    assert distinct_n([["ls -l", "ls -l"], ["a b", "c d"], ["", ""]], 2) == pytest.approx(0.75)
    assert distinct_n([["ls", "ls"], ["df", "du"]], 2) is None  # no bigram anywhere: undefined, not 0


@pytest.mark.parametrize(
    "code, language, valid",
    [
        ("x = [i for i in range(3)]", "python", True),
        ("def f(:", "python", False),
        ("find . -name '*.py' | xargs wc -l", "bash", True),
        ("ls 'unclosed", "bash", False),
        ("", "bash", False),
        ("AND(GreaterThan(2),LessThan(5))", "excel", True),
        ("OR(TextEquals(p), TextEquals(ul))", "excel", True),
        ("NOT(TextContains(In Progress))", "excel", True),
        ("Between(689, 927)", "excel", True),
        ("ColorScale()", "excel", True),
        ("AND(GreaterThan(2)", "excel", False),  # unclosed
        ("Foo(1)", "excel", False),  # unknown rule
        ("GreaterThan()", "excel", False),  # missing value
        ("Between(1)", "excel", False),  # one value of two
        ("top(10) extra", "excel", False),  # trailing text
    ],
)
def test_syntax_validity(code, language, valid):
    assert is_valid_syntax(code, language) is valid


def test_syntax_validity_unknown_language():
    with pytest.raises(ValueError, match="Unknown language 'rust'"):
        is_valid_syntax("fn main() {}", "rust")


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("template_match", {"predictions": ["ls -l /a", "ls"], "references": ["ls -l /b", "ls -a"]}, 0.5),
        ("code_exact_match", {"predictions": ["ls  -l", "ls"], "references": ["ls -l", "ls -a"]}, 0.5),
        ("syntax_validity", {"predictions": ["x = 1", "def f(:"], "language": "python"}, 0.5),
    ],
)
def test_evaluate_load_offline(name, kwargs, expected):
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(metric_path(name))
    (value,) = metric.compute(**kwargs).values()
    assert value == pytest.approx(expected)


def test_unknown_shipped_metric():
    with pytest.raises(ValueError, match="Unknown metric 'bleurt'.*template_match"):
        metric_path("bleurt")


def test_python_evaluation_reports_codebleu_of_the_top_candidates():
    pytest.importorskip("codebleu")
    from codefusion_hf.evaluation_codefusion import score_candidates

    candidates = [["x = sorted(a, key=len)", "print(a)"], ["y = 1", "y = 2"]]
    references = ["x = sorted(a, key=len)", "y = 2"]
    metrics = score_candidates(candidates, references, "python")
    assert metrics["codebleu@1"] == pytest.approx(codebleu(["x = sorted(a, key=len)", "y = 1"], references))
    assert metrics["exact_match@1"] == 0.5 and "codebleu@1" not in score_candidates(candidates, references, "bash")


def test_score_candidates_with_empty_lists_and_languages():
    from codefusion_hf.evaluation_codefusion import score_candidates

    # An empty candidate list counts as wrong and invalid, never as a crash.
    metrics = score_candidates([["ls -la"], []], ["ls -la", "df -h"], "bash")
    assert metrics["exact_match@1"] == 0.5 and metrics["syntax_valid@1"] == 0.5 and metrics["syntax_valid_all"] == 1.0
    other = score_candidates([["SELECT 1"]], ["SELECT 1"], "other")  # no syntax check, exact match and BLEU
    assert other["exact_match@1"] == 1.0 and "syntax_valid@1" not in other and "template_match@1" not in other


@pytest.mark.parametrize(
    "candidates, references, language, match",
    [
        ([["ls"]], ["ls"], "Bash", "language must be one of"),
        ([["ls"]], ["ls"], "rust", "'other' scores any other language"),
        ([[], []], ["ls", "df"], "bash", "every prompt's candidate list is empty"),
        ([], [], "bash", "must be equally long and not empty"),
        ([["ls"]], ["ls", "df"], "bash", "must be equally long"),
    ],
)
def test_score_candidates_bad_input(candidates, references, language, match):
    from codefusion_hf.evaluation_codefusion import score_candidates

    with pytest.raises(ValueError, match=match):
        score_candidates(candidates, references, language)


def test_evaluate_pipeline_checks_the_language_before_generating(tiny_pipeline, monkeypatch):
    from codefusion_hf.evaluation_codefusion import evaluate_pipeline

    calls = []
    monkeypatch.setattr(type(tiny_pipeline), "__call__", lambda *args, **kwargs: calls.append(1))
    with pytest.raises(ValueError, match="language must be one of"):
        evaluate_pipeline(tiny_pipeline, ["list files"], ["ls"], language="rust")
    assert not calls


def test_evaluate_pipeline_hands_each_batch_its_prompts_drafts(overfit_pipeline):
    from codefusion_hf.evaluation_codefusion import evaluate_pipeline
    from codefusion_hf.sampling_options_codefusion import SamplingOptions

    prompts, codes = [prompt for prompt, _ in PAIRS], [code for _, code in PAIRS]
    candidates, _, metrics = evaluate_pipeline(
        overfit_pipeline,
        prompts,
        codes,
        sampling=SamplingOptions(num_return_sequences=1, num_inference_steps=10, strength=0.5),
        batch_size=3,
        init_code=codes,
    )
    assert [c[0] for c in candidates] == codes and metrics["init_code"] and metrics["strength"] == 0.5
    with pytest.raises(ValueError, match="init_code has 1 entries for"):
        evaluate_pipeline(overfit_pipeline, prompts, codes, init_code=["ls"])


def test_write_evaluation_never_leaves_new_predictions_beside_old_metrics(tmp_path):
    """Both files are serialised before either is written, each renamed into place, the old metrics removed first:
    metrics that do not serialise leave the earlier pair as it was, and no partial file."""
    from codefusion_hf import evaluation_codefusion
    from codefusion_hf.evaluation_codefusion import write_evaluation

    write_evaluation(str(tmp_path), ["p"], ["ls"], [["ls", "ls -l"]], [[0.0, -1.0]], {"exact_match@1": 1.0})
    before = {path.name: path.read_text() for path in tmp_path.iterdir()}
    assert sorted(before) == ["metrics.json", "predictions.jsonl"]
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_evaluation(str(tmp_path), ["q"], ["df"], [["du"]], [[0.0]], {"machine": object()})
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == before
    written = []  # a run killed after the predictions: no metrics.json beside them, rather than the old one
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation_codefusion, "write_atomically", lambda path, text: written.append(path) or kill())
        with pytest.raises(KeyboardInterrupt):
            write_evaluation(str(tmp_path), ["q"], ["df"], [["du"]], [[0.0]], {"exact_match@1": 0.0})
    assert [os.path.basename(path) for path in written] == ["predictions.jsonl"]
    assert not (tmp_path / "metrics.json").exists()


def kill():
    raise KeyboardInterrupt
