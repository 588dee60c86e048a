"""Conversation memory with the in-memory store: windowing, the fetch and write stages."""

from __future__ import annotations

from typing import Any

import pytest

from stageflow_otel import (
    CollectingEventSink,
    Pipeline,
    RunIdentity,
    StageContext,
    StageExecutionError,
)
from stageflow_otel.helpers import (
    InMemoryMemoryStore,
    MemoryFetchStage,
    MemoryWindow,
    MemoryWriteStage,
    MockChatModel,
    Turn,
)

pytestmark = pytest.mark.anyio

TURNS = [
    Turn("user", "aaaa"),
    Turn("assistant", "bb"),
    Turn("user", "cccccc"),
    Turn("assistant", "d"),
]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (MemoryWindow(max_turns=None), TURNS),
        (MemoryWindow(max_turns=2), TURNS[2:]),
        (MemoryWindow(max_turns=None, max_chars=7), TURNS[2:]),  # "d" + "cccccc"
        (MemoryWindow(max_turns=None, max_chars=6), TURNS[3:]),  # a turn is never cut
        (MemoryWindow(max_turns=3, max_chars=9), TURNS[1:]),
        (MemoryWindow(max_turns=None, max_chars=1), TURNS[3:]),
    ],
)
def test_the_window_keeps_the_newest_whole_turns(
    window: MemoryWindow, expected: list[Turn]
) -> None:
    assert window.apply(TURNS) == expected


def test_window_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        MemoryWindow(max_turns=0)
    with pytest.raises(TypeError, match="max_chars"):
        MemoryWindow(max_chars="10")  # type: ignore[arg-type]


async def test_the_in_memory_store_keeps_the_newest_turns_per_session() -> None:
    store = InMemoryMemoryStore(max_turns=3, max_sessions=2)
    await store.append("a", TURNS)
    assert await store.load("a") == TURNS[1:]
    assert await store.load("a", last=1) == TURNS[3:]
    assert await store.load("a", last=0) == []
    await store.append("b", TURNS[:1])
    await store.append("c", TURNS[:1])  # "a" is the least recently written: forgotten
    assert await store.load("a") == []
    assert await store.load("b") == TURNS[:1]
    await store.clear("b")
    assert await store.load("b") == []


def conversation(store: Any, model: MockChatModel, window: MemoryWindow | None = None) -> Pipeline:
    async def answer(ctx: StageContext) -> dict[str, str]:
        history = ctx.inputs.require_from("memory", "memory")
        reply = await model.chat([*history, {"role": "user", "content": ctx.data["text"]}], ctx=ctx)
        return {"reply": reply.text, "history": str(len(history))}

    return (
        Pipeline("chat")
        .with_stage("memory", MemoryFetchStage(store, window=window))
        .with_stage("answer", answer, dependencies=["memory"])
        .with_stage(
            "remember", MemoryWriteStage(store, reply_from="answer"), dependencies=["answer"]
        )
    )


async def test_a_conversation_remembers_its_turns_within_the_window() -> None:
    store = InMemoryMemoryStore()
    model = MockChatModel(replies=["hi", "fine", "bye"])
    graph = conversation(store, model, MemoryWindow(max_turns=2)).build()
    ada = RunIdentity(session_id="s-ada")
    histories = []
    for text in ("hello", "how are you", "goodbye"):
        results = await graph.run({"text": text}, identity=ada)
        histories.append(results["answer"].data["history"])
    assert histories == ["0", "2", "2"]
    assert await store.load("s-ada") == [
        Turn("user", "hello"),
        Turn("assistant", "hi"),
        Turn("user", "how are you"),
        Turn("assistant", "fine"),
        Turn("user", "goodbye"),
        Turn("assistant", "bye"),
    ]
    assert await store.load("another") == []


async def test_the_stages_report_counts_never_text() -> None:
    store = InMemoryMemoryStore()
    await store.append("s", TURNS)
    sink = CollectingEventSink()
    graph = conversation(
        store, MockChatModel(replies=["ok"]), MemoryWindow(max_turns=3, max_chars=9)
    )
    await graph.build(event_sink=sink).run({"text": "q"}, identity=RunIdentity(session_id="s"))
    fetched = [
        {k: e[k] for k in ("store", "turns", "chars", "left_out")}
        for e in sink.of_type("memory.fetched")
    ]
    written = [
        {k: e[k] for k in ("store", "turns", "chars")} for e in sink.of_type("memory.written")
    ]
    assert fetched == [{"store": "in_memory", "turns": 3, "chars": 9, "left_out": 0}]
    assert written == [{"store": "in_memory", "turns": 2, "chars": 3}]


async def test_memory_needs_a_session() -> None:
    graph = conversation(InMemoryMemoryStore(), MockChatModel()).build()
    with pytest.raises(StageExecutionError, match="no session id"):
        await graph.run({"text": "q"})


async def test_custom_turns_and_bad_arguments() -> None:
    store = InMemoryMemoryStore()

    def turns(ctx: StageContext) -> list[Turn]:
        return [Turn.from_message({"role": "system", "content": ctx.data["note"]})]

    graph = Pipeline("p").with_stage("w", MemoryWriteStage(store, turns=turns)).build()
    await graph.run({"note": "remember me"}, identity=RunIdentity(session_id="s"))
    assert await store.load("s") == [Turn("system", "remember me")]
    with pytest.raises(ValueError, match="reply_from"):
        MemoryWriteStage(store)
    with pytest.raises(TypeError, match="no memory store"):
        MemoryFetchStage(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string 'role'"):
        Turn.from_message({"role": "user"})
