"""Re-basing a step's outcome across failed compare-and-sets: each external change counts once."""

from __future__ import annotations

import msgspec

from statek_bus.authoring.futures import SubTask, SubTaskState
from statek_bus.jobs.store import utcnow
from statek_bus.runtime.engine_state import load_state, store_state
from statek_bus.runtime.merge import Rebase
from statek_bus.wire.messages import JobRecord, Usage


def _parent(calls: int, children: dict[str, list[float]]) -> JobRecord:
    now = utcnow()
    record = JobRecord(id="p", agent="a", created_at=now, updated_at=now, usage=Usage(llm_calls=calls))
    state = load_state(record)
    state.child_usage = children
    store_state(record, state)
    return record


def _child_total(calls: int) -> list[float]:
    return [float(calls), 0.0, 0.0, 0.0, 0.0]


def test_a_child_usage_merged_on_one_retry_is_not_added_again_on_the_next() -> None:
    # The parent's step makes 1 call on a record with none. While it runs, child c1 reports 1 call
    # (conflict 1), then child c2 reports 1 call (conflict 2): the commit must say 3 calls, not 4.
    base = _parent(0, {})
    outcome = msgspec.structs.replace(base, usage=Usage(llm_calls=1), step=1)
    fresh1 = _parent(1, {"c1": _child_total(1)})
    fresh2 = _parent(2, {"c1": _child_total(1), "c2": _child_total(1)})
    rebase = Rebase(outcome, base, consumed=0)
    rebase.onto(fresh1)
    merged = rebase.onto(fresh2)
    assert merged.usage.llm_calls == 3
    assert set(load_state(merged).child_usage) == {"c1", "c2"}


def test_a_conflict_with_nothing_new_from_children_changes_no_usage() -> None:
    base = _parent(0, {"c1": _child_total(2)})
    base.usage.llm_calls = 2
    outcome = msgspec.structs.replace(base, usage=Usage(llm_calls=3), step=1)
    rebase = Rebase(outcome, base, consumed=0)
    rebase.onto(base)  # e.g. a message arrived: the record changed, child usage did not
    assert rebase.onto(base).usage.llm_calls == 3


def test_a_sub_task_completion_written_meanwhile_survives_the_merge() -> None:
    base = _parent(0, {})
    state = load_state(base)
    state.subtasks = {"s1": SubTask(job="child")}
    store_state(base, state)
    fresh = msgspec.structs.replace(base)
    done = load_state(fresh)
    done.subtasks = {"s1": SubTask(job="child", state=SubTaskState.COMPLETED, result=7)}
    done.child_usage = {"child": _child_total(1)}
    store_state(fresh, done)
    fresh.usage = Usage(llm_calls=1)
    merged = Rebase(msgspec.structs.replace(base, step=1), base, consumed=0).onto(fresh)
    assert load_state(merged).subtasks["s1"].state is SubTaskState.COMPLETED
    assert load_state(merged).subtasks["s1"].result == 7
