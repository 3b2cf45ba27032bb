"""Reference metrics pinned to known values: hand-computed cases, the rouge-score README example,
and NLTK's own GLEU/METEOR (with WordNet stubbed out) as an independent reference."""

from __future__ import annotations

import math
import socket

import pytest

from slmforge.errors import InputError
from slmforge.evaluate import overlap
from slmforge.evaluate.metrics import METRICS, is_refusal, resolve


def score(name: str, answer: str, reference: str | None) -> float | None:
    return METRICS[name].score([answer], [reference])[0]


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0),  # case, punctuation, article
        ("  an  apple ", "apple", 1.0),
        ("Paris", "London", 0.0),
        ("the cat", "the cats", 0.0),
    ],
)
def test_exact_match_uses_squad_normalization(answer, reference, expected):
    assert score("exact_match", answer, reference) == expected


def test_f1_is_squad_token_f1():
    # normalized: [cat sat on mat] vs [cat sat on red mat]: P = 4/4, R = 4/5, F1 = 8/9
    assert score("f1", "the cat sat on the mat", "a cat sat on a red mat") == pytest.approx(8 / 9)
    # repeated tokens are clipped: [cat cat cat] vs [cat dog]: 1 common, P 1/3, R 1/2, F1 0.4
    assert score("f1", "cat cat cat", "cat dog") == pytest.approx(0.4)
    assert score("f1", "Paris", "London") == 0.0
    assert overlap.squad_f1("", "") == 1.0 and overlap.squad_f1("the", "cat") == 0.0


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP 1): BLEU = (1/12)^(1/4)
    got = score("bleu", "the cat sat on the mat", "the cat sat on a mat")
    assert got == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert got == pytest.approx(53.7285, abs=1e-4)
    # every precision 1, hypothesis 5 words vs 6: brevity penalty exp(1 - 6/5)
    got = score("bleu", "the cat sat on the", "the cat sat on the mat")
    assert got == pytest.approx(100 * math.exp(-0.2))
    assert score("bleu", "Lisbon is lovely.", "Lisbon is lovely.") == pytest.approx(100)


def test_chrf_by_hand():
    # char 1-grams 2/3 match, 2-grams 1/2, 3-grams 0/1; precision = recall = 7/18 -> chrF 38.89
    assert score("chrf", "abc", "abd") == pytest.approx(100 * 7 / 18)
    assert score("chrf", "same words", "same words") == pytest.approx(100)


def test_rouge_matches_the_rouge_score_readme():
    """rouge-score's README: score('The quick brown fox jumps over the lazy dog',
    'The quick brown dog jumps on the log.') -> rouge1 F 0.70588, rougeL F 0.58824."""
    reference = "The quick brown fox jumps over the lazy dog"
    answer = "The quick brown dog jumps on the log."
    assert score("rouge1", answer, reference) == pytest.approx(0.7058823529411765)
    assert score("rougeL", answer, reference) == pytest.approx(0.5882352941176471)
    # bigrams: 2 shared of 7 (answer) and 8 (reference): F = 4/15
    assert score("rouge2", answer, reference) == pytest.approx(4 / 15)


def test_gleu_by_hand_and_against_nltk():
    # answer 1-3-grams: 6, reference 1-4-grams: 10, shared 6 -> 6 / max(6, 10)
    assert score("gleu", "the cat sat", "the cat sat down") == pytest.approx(0.6)
    assert score("gleu", "dog", "cat") == 0.0
    from nltk.translate.gleu_score import sentence_gleu

    for answer, reference in _PAIRS:
        expected = sentence_gleu([overlap.words(reference)], overlap.words(answer))
        assert overlap.gleu(answer, reference) == pytest.approx(expected), (answer, reference)


class _NoSynonyms:
    """Stands in for NLTK's WordNet (a data download): no synonyms, as in our METEOR."""

    def synsets(self, word: str) -> list:
        return []


def test_meteor_by_hand_and_against_nltk():
    # all 6 words match in 6 chunks: fmean 1, penalty 0.5 * (6/6)^3
    assert score("meteor", "the cat sat on the mat", "on the mat sat the cat") == pytest.approx(0.5)
    # exact: the, running; stem: cats~cat; 3 matches in 2 chunks: 0.75 * (1 - 0.5 * (2/3)^3)
    got = score("meteor", "the cats are running", "the cat is running")
    assert got == pytest.approx(0.75 * (1 - 0.5 * (2 / 3) ** 3))
    from nltk.translate.meteor_score import single_meteor_score

    for answer, reference in _PAIRS:
        expected = single_meteor_score(
            [w.lower() for w in overlap.words(reference)],
            [w.lower() for w in overlap.words(answer)],
            wordnet=_NoSynonyms(),
        )
        assert overlap.meteor(answer, reference) == pytest.approx(expected), (answer, reference)


_PAIRS = [
    (
        "It is a guide to action which ensures that the military always obeys the commands of "
        "the party.",
        "It is a guide to action that ensures that the military will forever heed Party commands.",
    ),
    ("Ride the old Tram 28 once, then use the metro.", "Use the metro, and ride Tram 28 once."),
    ("Bring shoes with good grip.", "Bring walking shoes; the cobblestones get slippery."),
    ("the the the the", "the cat is on the mat"),
    ("Pack light.", "Spring and early autumn are ideal."),
]


def test_length_and_refusal_need_no_reference():
    assert score("length", "one two  three", None) == 3.0
    assert score("refusal", "I'm sorry, but I can't help with that.", None) == 1.0
    assert score("refusal", "Take the tram; you can't miss it.", None) == 0.0
    assert is_refusal("As an AI language model, I cannot share that.")
    assert not is_refusal("I'm sorry to hear your flight was late. Try the night bus.")
    assert score("f1", "anything", None) is None  # reference metrics skip rows without one


def test_resolve_names_and_all():
    assert [m.name for m in resolve(["f1", "bleu", "f1"])] == ["f1", "bleu"]
    assert "embedding_similarity" in [m.name for m in resolve(["all"])]
    with pytest.raises(InputError, match=r"unknown metric 'blue' \(known: exact_match, f1"):
        resolve(["blue"])


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_every_metric_runs_with_the_network_blocked(no_network):
    """Every registered metric, the embedding model included, computes with no socket."""
    answers = ["The cat sits on the mat.", "Quantum chromodynamics is hard."]
    references = ["A cat is sitting on a mat.", "A cat is sitting on a mat."]
    for metric in METRICS.values():
        values = metric.score(answers, references)
        assert len(values) == 2 and all(isinstance(v, float) for v in values), metric.name
    similar, unrelated = METRICS["embedding_similarity"].score(answers, references)
    # all-MiniLM-L6-v2 cosine similarities of these pairs (as sentence-transformers computes)
    assert similar == pytest.approx(0.9718, abs=2e-3)
    assert unrelated == pytest.approx(0.0, abs=0.05)
    same = METRICS["embedding_similarity"].score(["Lisbon"], ["Lisbon"])[0]
    assert same == pytest.approx(1.0, abs=1e-5)
