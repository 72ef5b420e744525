"""The growing answer, without llama.cpp: stop strings, held-back text, UTF-8 split across
tokens, pacing and the leading space."""

from __future__ import annotations

from mixdesk.core.engine.answer import Answer, stop_position


def _answer(*stops: str, interval_s: float = 0.0) -> Answer:
    return Answer(request_id=1, n_prompt=5, stops=stops, interval_s=interval_s)


def test_stop_position_finds_a_stop_and_holds_back_a_possible_start() -> None:
    assert stop_position("hello END there", 0, ("END",)) == (6, 0)
    assert stop_position("hello EN", 0, ("END",)) == (-1, 2)  # "EN" could begin "END"
    assert stop_position("hello", 0, ()) == (-1, 0)
    # a stop string that straddles what was already sent is still found
    assert stop_position("abcEND", 4, ("END",)) == (3, 0)


def test_a_stop_string_ends_the_answer_and_is_never_sent() -> None:
    answer = _answer("</s>", "###")
    sent = []
    for piece in (b" Hello", b" world", b"#", b"#", b"#", b" more"):
        if answer.add(piece):
            break
        sent.append(answer.due())
    sent.append(answer.rest())
    assert answer.finish == "stop"
    assert answer.text == "Hello world"
    assert "".join(sent) == "Hello world"
    assert answer.n_generated == 5


def test_text_that_could_start_a_stop_string_is_held_then_released() -> None:
    answer = _answer("STOP")
    answer.add(b"go ST")
    assert answer.due() == "go "  # "ST" is held back
    answer.add(b"ILL")
    assert answer.due() == "STILL"
    assert answer.rest() == ""
    assert answer.finish == "length"


def test_utf8_split_across_tokens_arrives_whole() -> None:
    answer = _answer()
    euro = "€".encode()
    answer.add(euro[:1])
    assert answer.due() == ""
    answer.add(euro[1:])
    assert answer.due() == "€"
    answer.add(b"\xe2")  # a broken last character is replaced, not lost
    assert answer.rest() == "\ufffd"


def test_the_leading_space_of_an_answer_is_dropped_only_at_the_start() -> None:
    answer = _answer()
    answer.add(b"  Paris")
    answer.add(b" is")
    assert answer.rest() == "Paris is"


def test_deltas_are_paced() -> None:
    answer = _answer(interval_s=3600)
    answer.add(b"a")
    assert answer.due() == "a"  # the first goes at once
    answer.add(b"b")
    assert answer.due() == ""  # the next waits for the interval...
    assert answer.rest() == "b"  # ...or for the end
