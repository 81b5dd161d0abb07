"""The text of a completion choice (gpt.completions): whole characters only, stop strings held back."""

from __future__ import annotations

from gpt.completions import ChoiceText
from gpt.tokenizer import GPT2Tokenizer


def test_a_choice_holds_back_unfinished_characters_and_what_may_start_a_stop_string():
    tokenizer = GPT2Tokenizer()
    ids = tokenizer.encode("Caf\u00e9 \U0001f600 ends here. More")  # the emoji takes several byte-level tokens
    choice = ChoiceText(tokenizer, stops=["here."])
    pieces = [choice.add(i) for i in ids]
    assert "".join(pieces) == choice.text == "Caf\u00e9 \U0001f600 ends " and choice.finish_reason == "stop"
    assert not any("\ufffd" in piece for piece in pieces)  # never half a character
    unstopped = ChoiceText(tokenizer, stops=["here and there"])
    pieces = [unstopped.add(i) for i in ids] + [unstopped.end()]
    assert "".join(pieces) == "Caf\u00e9 \U0001f600 ends here. More" and unstopped.finish_reason == "length"
    assert pieces[-1] == ""  # nothing was held back at the end: no prefix of the stop string ends the text
