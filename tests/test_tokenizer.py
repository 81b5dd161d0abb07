import pytest

from gpt.errors import UserError
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, load_tokenizer, make_tokenizer, save_tokenizer


def test_char_round_trip_and_vocabulary(shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    assert tok.vocab_size == 65
    assert tok.decode(tok.encode(shakespeare[:5000])) == shakespeare[:5000]
    assert tok.encode("\n") == [0]  # sorted vocabulary, as in the lecture: '\n' first, then ' '


def test_char_unknown_characters_are_listed():
    tok = CharTokenizer("abc ")
    with pytest.raises(UserError, match=r"2 character\(s\).*'é'.*'€'"):
        tok.encode("a é b € é")


def test_char_identity_depends_on_vocabulary():
    assert CharTokenizer("abc").identity != CharTokenizer("abd").identity
    assert CharTokenizer("cab").identity == CharTokenizer("abc").identity


def test_gpt2_matches_the_reference_encoding():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    text = "First Citizen:\nBefore we proceed any further, hear me speak. <|endoftext|> é€"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert 50256 not in ids  # the literal string is text, not the special token


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_save_and_load(tmp_path, kind):
    tok = make_tokenizer(kind, "hello world")
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.identity == tok.identity
    assert again.encode("hello") == tok.encode("hello")


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path / "tokenizer.json")
