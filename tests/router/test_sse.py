"""The SSE splitting of engine streams (pure logic; the relay itself is tested over real HTTP)."""

from __future__ import annotations

from router.upstream import SSEBuffer


def test_events_split_across_chunks_and_several_in_one_chunk() -> None:
    buffer = SSEBuffer()
    assert buffer.feed(b'data: {"a"') == []
    assert buffer.feed(b":1}\n") == []
    assert buffer.feed(b'\ndata: {"b":2}\n\ndata: [DO') == [b'{"a":1}', b'{"b":2}']
    assert buffer.feed(b"NE]\n\n") == [b"[DONE]"]
    assert buffer.close() == []


def test_comments_and_other_fields_are_skipped_and_a_last_event_without_blank_line_is_kept() -> None:
    buffer = SSEBuffer()
    assert buffer.feed(b': keep-alive\n\nevent: message\ndata:{"x":1}\n\n') == [b'{"x":1}']
    assert buffer.feed(b"data: [DONE]\n") == []
    assert buffer.close() == [b"[DONE]"]
