"""Response-cache keys: equivalent questions share one; whatever the answer depends on splits it."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from widelog.cache.keys import NORMALIZATION_VERSION, answer_key, normalize_query

WHITESPACE = [" ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000"]  # incl. NBSP, em, ideographic
KOREAN = st.text(st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1)
NON_LATIN = st.text(
    st.characters(
        categories=["L", "M", "N", "P"],
        include_characters="가힣ㄱㅎ한국어日本語中文Ωλ",
    ),
    min_size=1,
)
WORD = st.text(st.characters(blacklist_categories=["Zs", "Zl", "Zp", "Cc", "Cs"]), min_size=1)


def key(question: str, **overrides: object) -> str:
    fields: dict[str, object] = {"prompt_version": "v3", "language": "ko", "model": "m"}
    return answer_key(question, **(fields | overrides))  # type: ignore[arg-type]


@given(st.text())
def test_normalizing_twice_changes_nothing(text):
    once = normalize_query(text)
    assert once == normalize_query(once)


@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
@given(text=st.one_of(KOREAN, NON_LATIN, st.text()))
def test_every_unicode_normal_form_of_a_question_shares_its_key(form, text):
    assert key(text) == key(unicodedata.normalize(form, text))


@given(st.lists(WORD.filter(lambda w: not w.isspace()), min_size=1), st.data())
def test_runs_of_any_whitespace_count_as_one_space(words, data):
    spaced = [data.draw(st.lists(st.sampled_from(WHITESPACE), min_size=1)) for _ in words]
    messy = "".join("".join(gap) + word for gap, word in zip(spaced, words, strict=True))
    assert key(" ".join(words)) == key(messy + "\u3000\n")


@given(st.text(st.characters(min_codepoint=0x41, max_codepoint=0x7A)))
def test_latin_case_does_not_matter(text):
    assert key(text.upper()) == key(text.lower())


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "비밀번호를 어떻게 재설정하나요?",
            "비밀번호를  어떻게\u3000재설정하나요？",
        ),  # full-width ?
        (
            "비밀번호를 어떻게 재설정하나요?",
            unicodedata.normalize("NFD", "비밀번호를 어떻게 재설정하나요?"),
        ),
        ("パスワード", "ﾊﾟｽﾜｰﾄﾞ"),  # half-width katakana
        ("配送状況を確認するには?", "配送状況を確認するには？"),
        ("How do I reset my password?", "  ＨＯＷ do i RESET my\tpassword? "),  # full-width Latin
        ("Wie kann ich mein Abo kündigen?", "WIE KANN ICH MEIN ABO KU\u0308NDIGEN?"),  # combining ¨
        ("straße", "STRASSE"),
        ("ΣΊΣΥΦΟΣ", "σίσυφος"),  # final sigma folds with sigma
    ],
)
def test_equivalent_questions_in_many_scripts_share_a_key(one, other):
    assert key(one) == key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("비밀번호를 재설정하나요?", "비밀번호를 재설정하나요"),  # punctuation is kept
        ("reset password", "resetpassword"),  # spaces separate words
        ("a\u200bb", "ab"),  # zero-width characters are kept (n1 does not strip them)
    ],
)
def test_questions_that_differ_beyond_normalization_do_not_share_a_key(one, other):
    assert key(one) != key(other)


@given(st.text(), st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_different_prompt_versions_never_share_a_key(question, one, other):
    if one != other:
        assert key(question, prompt_version=one) != key(question, prompt_version=other)


@given(st.text(), st.one_of(st.none(), st.text(max_size=16)), st.one_of(st.none(), st.text()))
def test_different_languages_never_share_a_key(question, one, other):
    if one != other:
        assert key(question, language=one) != key(question, language=other)


@given(st.text(), st.text(min_size=1), st.text(min_size=1))
def test_different_models_never_share_a_key(question, one, other):
    if one != other:
        assert key(question, model=one) != key(question, model=other)


def test_no_language_and_an_empty_language_are_different_keys():
    assert key("q", language=None) != key("q", language="")


def test_field_boundaries_cannot_be_shifted_to_forge_a_key():
    assert key("q", prompt_version="v1|ko", language="") != key(
        "q", prompt_version="v1", language="|ko"
    )


@given(KOREAN, KOREAN)
def test_the_conversation_before_the_question_is_part_of_the_key(question, earlier):
    context = [("user", earlier), ("assistant", "네")]
    assert key(question) != key(question, context=context)
    assert key(question, context=context) == key(
        question, context=[("user", unicodedata.normalize("NFD", earlier)), ("assistant", "네")]
    )


def test_who_said_a_turn_is_part_of_the_key():
    assert key("q", context=[("user", "hi")]) != key("q", context=[("assistant", "hi")])


def test_keys_start_with_the_normalization_version():
    assert key("q").startswith(f"{NORMALIZATION_VERSION}:")
    assert 3 + 32 == len(key("q"))
