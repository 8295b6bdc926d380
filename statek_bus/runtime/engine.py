"""The step: one unit of a job's progress, as STATEK defines it (inbox, code, at most one LLM call).

A step (1) delivers the job's inbox (user messages become user turns, notifications wait for
the next safe point), (2) executes the pending code block — a warmup block, or the previous LLM
reply — in the sandbox, (3) makes at most one LLM call, whose reply is the next step's code, and
(4) returns the new record for the executor to commit with a compare-and-set. Nothing here
touches the work queue: :mod:`statek_bus.runtime.executor` owns fetching, committing and acknowledging.

Engine state lives in ``JobRecord.engine`` as an :class:`EngineState` (chat log, counters,
workspace reference), so the chat log commits atomically with the step.

Harness limits (settings): ``max_turns`` LLM turns, ``max_exceptions`` runtime errors,
``max_consecutive_exceptions`` failing steps in a row, ``max_token_usage`` tokens; counted per
run (a DONE job restarted by a message starts a new run). Breaking one ends the job DONE with
``error`` set and ``exit_status`` ``"Error: <message>"``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from statek_bus.authoring.agents import Agent, WarmupBlock, job_warmup
from statek_bus.authoring.console import format_value
from statek_bus.authoring.context import PERM_KEY
from statek_bus.authoring.dialog import agent_reminder, dialog_turns
from statek_bus.authoring.knowledge import KnowledgeView
from statek_bus.authoring.postprocess import (
    LLMStep,
    ProcessedStep,
    StepContext,
    agent_post_processors,
    apply_post_processors,
    job_post_processors,
)
from statek_bus.authoring.prompts import parse_difficulty
from statek_bus.authoring.tools import JobContext, select_tools
from statek_bus.jobs.store import utcnow
from statek_bus.mesh import metrics
from statek_bus.mesh.settings import Settings
from statek_bus.runtime import trace as agent_trace
from statek_bus.runtime.chat import ChatStyle, LoggedCall, LogItem, ParsedReply, build_messages, parse_reply
from statek_bus.runtime.coderunner import CodeRunner, ExecRequest, ExecResult, ExecUnit
from statek_bus.runtime.engine_state import EngineState, StepTrace, load_state, store_state
from statek_bus.runtime.outcome import RetryStep, StepOutcome
from statek_bus.runtime.resume import absorb_inbox, bind_env, deliver_subtasks, gate, suspend_wait
from statek_bus.wire.errors import ServiceUnavailableError, StatekError
from statek_bus.wire.messages import (
    CompleteReply,
    CompleteRequest,
    JobRecord,
    JobStatus,
    cancelled_exit,
    error_exit,
)
from statek_bus.wire.options import JobOptions
from statek_bus.wire.values import from_json, to_json

log = logging.getLogger(__name__)

__all__ = ["HarnessError", "Model", "SessionFactory", "StepEngine"]


_MAX_REPLY_CHARS = 300_000
"""Longest reply kept: the chat log lives in the job record, a NATS message (1 MB by default)."""


class HarnessError(Exception):
    """A harness limit was exceeded; the job ends with ``Error: <message>``."""


class Model(Protocol):
    """The LLM seam: the executor's implementation calls the provider service."""

    async def complete(self, request: CompleteRequest) -> CompleteReply:
        """Answer ``request``; :class:`StatekError` on failure."""
        ...

    async def resume_code(self) -> None:
        """The step runs code again after its call (the reply's): wait until it may run code."""
        ...


SessionFactory = Callable[[JobContext, Agent, dict[str, Any] | None, dict[str, Any], bool], Awaitable[Any]]
"""Builds a code session: (job context, agent, workspace ref, shared vars, trusted) → session."""

WorkspaceSaver = Callable[[str, int, Any], Awaitable[dict[str, Any] | None]]
"""Saves a workspace snapshot: (job id, step, data) → reference stored in the engine state."""


def _brings_code(options: JobOptions | None) -> bool:
    """Whether the job brought code of its own (``warmup_code``: written by a client or by a
    parent's model code, so it runs where model code runs, and so does everything after it)."""
    return bool(job_warmup(options))


def _model_code_ran(state: EngineState) -> bool:
    """Whether model-written code may have run in the job (its namespace may hold what it made):
    once the model has replied at all, whether or not that reply's code ran to its end."""
    return any(item.kind == "llm" for item in state.log)


class StepEngine:
    """Runs one step of a code-first job.

    Args:
        settings: harness limits, step timeout.
        runner: where code runs.
        model: the LLM seam.
        session_factory: builds the code session for a step.
        save_workspace: persists the workspace snapshot.
    """

    def __init__(
        self,
        settings: Settings,
        runner: CodeRunner,
        model: Model,
        session_factory: SessionFactory,
        save_workspace: WorkspaceSaver,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.model = model
        self.session_factory = session_factory
        self.save_workspace = save_workspace

    async def run(self, record: JobRecord, agent: Agent, ctx: JobContext) -> StepOutcome:
        """Run step ``record.step`` and return the record to commit.

        A job that ends with an error first calls the error handlers its tools registered (once:
        the list is cleared in the committed state; a crash before the commit may repeat them).
        """
        outcome = await self._run(record, agent, ctx)
        new = outcome.record
        if new.status is JobStatus.DONE and new.error is not None:
            state = outcome.state or load_state(new)
            if state.error_handlers:
                await _call_error_handlers(agent, state.error_handlers, new.error)
                state.error_handlers = []
                store_state(new, state)
        return outcome

    async def _run(self, record: JobRecord, agent: Agent, ctx: JobContext) -> StepOutcome:
        new = msgspec.structs.replace(
            record, inbox=[], params=dict(record.params), usage=msgspec.structs.replace(record.usage)
        )
        state = load_state(record)
        step = record.step
        trace = StepTrace(step=step, log_from=len(state.log))
        state.log = list(state.log)
        statuses = trace.statuses
        consumed = len(record.inbox)
        env = ctx.extras.get("env")

        def set_status(status: JobStatus) -> None:
            if new.status != status:
                new.status = status
                statuses.append(status)

        def finish(exit_status: Any, error: str | None = None) -> StepOutcome:
            set_status(JobStatus.DONE)  # first: it records the change in the step's trace
            new.end(exit_status, error)
            state.turns = state.exceptions = state.consecutive = state.tokens = 0
            state.token_extension = 0
            state.wait, state.memo = None, {}
            return self._done(new, state, trace, consumed)

        if record.cancel_reason:
            return finish(cancelled_exit(record.cancel_reason))
        absorb_inbox(state, record, step)
        style = ChatStyle.of(agent.chat_style)
        if step == 0 and not record.engine:
            state.difficulty = parse_difficulty(
                agent.metadata.get("DEFAULT_DIFFICULTY"), self.settings.default_difficulty
            )
        options: JobOptions | None = ctx.extras.get("job_options")
        view = ctx.extras.get("knowledge")
        extra = options.extra_resources if options is not None else None
        if isinstance(view, KnowledgeView):  # the step's one knowledge version, donors at its difficulty
            try:
                agent = view.at(agent, state.difficulty, extra)
            except ValueError as exc:  # the job's own extra_resources name a role not served here
                return finish(error_exit(str(exc)), str(exc))
            state.knowledge = view.version
        ctx.extras["library"] = dict(state.library)
        blocks = [*job_warmup(options), *agent.warmup_blocks()]  # the job's own code first, as STATEK runs it
        ctx.difficulty = state.difficulty
        bind_env(ctx, env, state)

        async def run_pending(after_call: bool = False) -> StepOutcome | None:
            """Run the pending code (or resume it where it suspended): an outcome ends the step.

            ``after_call``: it is the reply the step's model call just brought (``trace.then_ran``).
            """
            nonlocal agent
            started_at = utcnow()
            item, units, block = self._pending(state, blocks, style, step)
            if item is not None:
                resuming = state.wait is not None
                if block is not None:
                    set_status(JobStatus.WARMING_UP)
                    state.warmup_next += 0 if resuming else 1
                elif new.status in (JobStatus.READY, JobStatus.SUSPENDED):
                    set_status(JobStatus.STARTED)
                index = state.log.index(item)
                if after_call:
                    trace.then_ran = index
                else:
                    trace.ran = index
                    trace.console_from = len(item.console) if resuming else 0
                for i, unit in enumerate(units):
                    unit.site = f"{index}.{i}"
                result = await self._execute(
                    ctx, agent, state, record, units, trusted=bool(block and block.hidden),
                    app_code=block is not None and not _brings_code(options) and not _model_code_ran(state),
                )  # fmt: skip
                state.perm = dict(ctx.extras.get(PERM_KEY) or {})
                state.library = dict(ctx.extras.get("library") or {})
                if env is not None and env.subtask_done is not None and state.subtask_done is None:
                    state.subtask_done, trace.subtask = env.subtask_done, True
                if result.suspended is not None:
                    self._record_result(item, units, result, state, step, partial=True)
                    suspend_wait(state, env, result, index, block, started_at)
                    set_status(JobStatus.SUSPENDED)
                    return self._done(new, state, trace, consumed)
                state.wait, state.memo = None, {}
                failed = self._record_result(item, units, result, state, step)
                agent_trace.add_calls(ctx, item)
                for text in state.held:  # messages that arrived while it waited
                    state.log.append(LogItem(kind="user", step=step, text=text))
                state.held = []
                for name, value in ctx.error_handlers:
                    state.error_handlers.append({"tool": name, "context": _context_json(value)})
                if ctx.difficulty_changed:  # panic() or a harder example: a harder model, more budget
                    _raise_difficulty(state, ctx.difficulty, step)
                    if isinstance(view, KnowledgeView):
                        agent = view.at(agent, state.difficulty, extra)
                if failed is not None and block is not None:
                    return finish(error_exit(f"warmup failed: {failed}"), f"warmup failed: {failed}")
                if result.exited:
                    if state.notifications or state.pending_subtasks:
                        self._deliver_notifications(state, step)
                    else:
                        return finish(result.exit_value)
                self._check_exceptions(state)
                if state.warmup_next < len(blocks):
                    return self._done(new, state, trace, consumed)
            return None

        try:
            # 0. A waiting job re-checks what it waits for; still unmet, it stays SUSPENDED.
            if state.wait is not None and not await gate(state, env):
                return self._done(new, state, trace, consumed)
            # 1. Pick and run the pending code (or resume it where it suspended).
            outcome = await run_pending()
            if outcome is not None:
                return outcome
            # 2. At most one LLM call.
            set_status(JobStatus.STARTED)
            if state.turns + 1 > (turns := self._limit(self.settings.max_turns, state)):
                raise HarnessError(f"Maximum number of turns exceeded: {state.turns + 1}/{_shown(turns)}")
            self._deliver_notifications(state, step)
            reply = await self._call_model(ctx, agent, new, state, style, options)
            if len(reply.text) > _MAX_REPLY_CHARS:
                raise HarnessError(
                    f"LLM reply too large: {len(reply.text)} characters (limit {_MAX_REPLY_CHARS})"
                )
            parsed = parse_reply(reply.text, bool(reply.tool_calls), style)
            processed = self._post_process(agent, options, record, state, step, reply, parsed)
            if processed is not None and processed.step is None:  # held back: asked again next step
                return self._done(new, state, trace, consumed)
            text = reply.text
            if processed is not None and processed.step is not None and processed.acted:
                text = processed.step.text
                parsed = ParsedReply(code=processed.step.code, dialog=processed.step.dialog, final=False)
            calls = [
                LoggedCall(id=c.id or f"call-{step}-{i}", name=c.name, arguments=dict(c.arguments))
                for i, c in enumerate(reply.tool_calls)
            ]
            llm_item = LogItem(
                kind="llm",
                step=step,
                text=text,
                code=None if parsed.code == text else parsed.code,
                calls=calls,
                dialog=parsed.dialog,
                reasoning=reply.reasoning,
                reasoning_model=(reply.model or agent.model) if reply.reasoning else None,
            )
            state.log.append(llm_item)
            budget = self._limit(self.settings.max_token_usage, state) + state.token_extension
            if state.tokens > budget:
                raise HarnessError(f"Maximum token usage exceeded: {state.tokens}/{_shown(budget)}")
            acted = processed is not None and processed.acted
            if parsed.final and not acted and not state.notifications and not state.pending_subtasks:
                llm_item.executed, llm_item.ran_at = True, step
                if self._remind(agent, state, step):  # the reminder goes in and the job goes on
                    return self._done(new, state, trace, consumed)
                return finish(None)
            # 3. The reply's code runs in this step too. A crash before the commit re-runs the
            # step from the last commit; its model call has the same identity and the provider
            # answers it from its ledger instead of calling the model again.
            if self._has_pending(state, blocks):
                await self.model.resume_code()
                outcome = await run_pending(after_call=True)
                if outcome is not None:
                    return outcome
            return self._done(new, state, trace, consumed)
        except HarnessError as exc:
            state.log.append(LogItem(kind="system", step=step, text=error_exit(str(exc)), executed=True))
            return finish(error_exit(str(exc)), str(exc))

    # --- pieces ------------------------------------------------------------------------------------
    @staticmethod
    def _remind(agent: Agent, state: EngineState, step: int) -> bool:
        """Add the agent's reminder to the chat if it is ready and has not fired since the last user turn."""
        reminder = agent_reminder(agent)
        if reminder is None:
            return False
        for item in reversed(state.log):
            if item.kind == "user":
                break
            if item.reminder:
                return False
        if not reminder.ready(dialog_turns([(i.kind, bool(i.dialog)) for i in state.log])):
            return False
        state.log.append(LogItem(kind="system", step=step, text=reminder.text, executed=True, reminder=True))
        return True

    def _post_process(
        self,
        agent: Agent,
        options: JobOptions | None,
        record: JobRecord,
        state: EngineState,
        step: int,
        reply: CompleteReply,
        parsed: ParsedReply,
    ) -> ProcessedStep | None:
        """Run the agent's post-processors over the reply (None: it has none); their messages join the chat."""
        processors = agent_post_processors(agent)
        if options is not None and options.post_processing:
            try:
                processors = (*processors, *job_post_processors(options.post_processing, agent.role))
            except ValueError as exc:
                raise HarnessError(f"post_processing of this job: {exc}") from None
        if not processors:
            return None
        draft = LLMStep(
            text=reply.text,
            dialog=parsed.dialog,
            code=parsed.code,
            tool_calls=tuple(c.name for c in reply.tool_calls),
            final=parsed.final,
        )
        view = StepContext(
            job_id=record.id, agent=agent.role, llm_calls=state.turns, fired=frozenset(state.post_fired)
        )
        processed = apply_post_processors(processors, draft, view)
        state.post_fired = [*state.post_fired, *(k for k in processed.fired if k not in state.post_fired)]
        for message in processed.messages:
            state.log.append(LogItem(kind="system", step=step, text=message, executed=True))
        return processed

    @staticmethod
    def _has_pending(state: EngineState, blocks: list[WarmupBlock]) -> bool:
        """Whether :meth:`_pending` has code to run (it is resumed, a warmup block, or a reply)."""
        if state.wait is not None or state.warmup_next < len(blocks):
            return True
        pending = next((i for i in reversed(state.log) if i.kind == "llm"), None)
        return pending is not None and not pending.executed

    def _pending(
        self, state: EngineState, blocks: list[WarmupBlock], style: ChatStyle, step: int
    ) -> tuple[LogItem | None, list[ExecUnit], WarmupBlock | None]:
        wait = state.wait
        if wait is not None:  # resume: units before the suspended one are done, it restarts at its statement
            item = state.log[wait.item]
            block = blocks[wait.block] if wait.block is not None and wait.block < len(blocks) else None
            units = self._warmup_units(block) if block is not None else self._reply_units(item, style)
            for unit in units[: wait.unit]:
                unit.skip = True
            if wait.unit < len(units):
                units[wait.unit].start = wait.statement
            return item, units, block
        if state.warmup_next < len(blocks):
            block = blocks[state.warmup_next]
            calls = [
                LoggedCall(
                    id=f"STATEK-{state.warmup_next + 1:03d}-{i}", name=c.name, arguments=dict(c.kwargs)
                )
                for i, c in enumerate(block.calls)
            ]
            item = LogItem(kind="warmup", step=step, code=block.code, calls=calls, hidden=block.hidden)
            state.log.append(item)
            return item, self._warmup_units(block), block
        pending = next((i for i in reversed(state.log) if i.kind == "llm"), None)
        if pending is None or pending.executed:
            return None, [], None
        return pending, self._reply_units(pending, style), None

    @staticmethod
    def _warmup_units(block: WarmupBlock) -> list[ExecUnit]:
        units = [
            ExecUnit(kind="tool", tool=c.name, arguments={"__args__": list(c.args), **c.kwargs})
            for c in block.calls
        ]
        if block.code.strip():
            units.append(ExecUnit(kind="code", code=block.code, trusted=block.hidden))
        return units

    @staticmethod
    def _reply_units(pending: LogItem, style: ChatStyle) -> list[ExecUnit]:
        units = [
            ExecUnit(kind="tool", tool=c.name, arguments=c.arguments)
            for c in pending.calls
            if c.name != "python_cli"
        ]
        if style is not ChatStyle.DIRECT:
            units.append(ExecUnit(kind="code", code=pending.source))
        cli = [c for c in pending.calls if c.name == "python_cli"]
        for i, c in enumerate(cli):
            code = str(c.arguments.get("code", ""))
            units.append(ExecUnit(kind="cli" if i == 0 else "cli-extra", code=code))
        return units

    async def _execute(
        self,
        ctx: JobContext,
        agent: Agent,
        state: EngineState,
        record: JobRecord,
        units: list[ExecUnit],
        *,
        trusted: bool,
        app_code: bool = False,
    ) -> ExecResult:
        session = await self.session_factory(ctx, agent, state.workspace, record.shared_vars, trusted)
        request = ExecRequest(
            session=session, units=units, deadline_seconds=self.settings.step_timeout, app_code=app_code
        )
        result = await self.runner.run(request)
        if result.workspace is not None:
            state.workspace = await self.save_workspace(record.id, record.step, result.workspace)
        return result

    def _record_result(
        self,
        item: LogItem,
        units: list[ExecUnit],
        result: ExecResult,
        state: EngineState,
        step: int,
        *,
        partial: bool = False,
    ) -> str | None:
        """Store outputs on the log item; count errors; return the code error, if any.

        A resumed item keeps what its earlier run printed; ``partial`` (the code suspended) adds the
        output so far and leaves the item unexecuted, counting nothing.
        """
        console: list[str] = [*item.console, *result.notes]
        code_error: str | None = None
        call_results: dict[str, str] = {}
        tool_calls = [c for c in item.calls if c.name != "python_cli"]
        cli_calls = [c for c in item.calls if c.name == "python_cli"]
        tool_i = cli_i = 0
        for unit, res in zip(units, result.units, strict=False):
            if unit.kind == "tool":
                if not unit.skip and res.suspended is None:
                    call_results[tool_calls[tool_i].id] = "\n".join(res.console)
                tool_i += 1
            elif unit.kind in ("cli", "cli-extra"):
                if unit.kind == "cli-extra":
                    text = "ValueError: at most one python_cli call per step"
                else:
                    text = "\n".join(res.console)
                    code_error = code_error or res.error
                if not unit.skip and res.suspended is None:
                    call_results[cli_calls[cli_i].id] = text
                cli_i += 1
            else:
                console += res.console
                code_error = code_error or res.error
        for name in result.dropped:
            console.append(
                f"Warning: {name} could not be saved (its value has no persistent form) and was dropped"
            )
        item.calls = [
            msgspec.structs.replace(c, result=call_results.get(c.id, c.result or "")) for c in item.calls
        ]
        item.console = console
        if partial:
            return None
        if refused := sum(1 for res in result.units if res.sandbox):
            metrics.SANDBOX_REFUSALS.inc(refused)
        item.executed, item.ran_at = True, step
        if not item.source.strip() and not item.calls and item.kind == "llm":
            item.console = [*console, "Error: no code submitted."]
        if code_error is not None:
            state.exceptions += 1
            state.consecutive += 1
        else:
            state.consecutive = 0
        return code_error

    def _limit(self, base: int, state: EngineState) -> float:
        """A harness limit extended by ``limit_extension_per_completion`` per LLM call of this run."""
        factor = 1.0 + self.settings.limit_extension_per_completion * state.turns
        return base * factor if factor != 1.0 else base

    def _check_exceptions(self, state: EngineState) -> None:
        s = self.settings
        if state.exceptions > (most := self._limit(s.max_exceptions, state)):
            raise HarnessError(f"Maximum number of exceptions exceeded: {state.exceptions}/{_shown(most)}")
        if state.consecutive > (row := self._limit(s.max_consecutive_exceptions, state)):
            raise HarnessError(f"Maximum consecutive exceptions exceeded: {state.consecutive}/{_shown(row)}")

    def _deliver_notifications(self, state: EngineState, step: int) -> None:
        for text in state.notifications:
            state.log.append(LogItem(kind="notification", step=step, text=text, executed=True))
        state.notifications = []
        deliver_subtasks(state, step)

    async def _call_model(
        self,
        ctx: JobContext,
        agent: Agent,
        record: JobRecord,
        state: EngineState,
        style: ChatStyle,
        options: JobOptions | None,
    ) -> CompleteReply:
        prompt, hint = _prompt_and_hint(agent, record, style, state.difficulty)
        shared = ", ".join(sorted(record.shared_vars)) if record.shared_vars else ""
        opening = f"Begin. Variables in your workspace: {shared}." if shared else "Begin."
        messages = build_messages(
            state.log,
            style=style,
            system_prompt=prompt,
            opening=opening + (f" ({hint})" if hint else ""),
            hint=hint,
            box=agent.metadata.get("XML_BOX_CONSOLE") or self.settings.xml_box_console or None,
        )
        scope = agent.metadata.get("LLM_TOOLS_SCOPE")
        tools = select_tools(agent.all_tools(), scope, style.value) if scope else []
        meta = {
            k: v for k, v in agent.metadata.items() if isinstance(v, str | int | float | bool | list | dict)
        }
        meta["DIFFICULTY"] = state.difficulty
        if state.knowledge:
            meta["KNOWLEDGE"] = state.knowledge
        temperature = agent.metadata.get("TEMPERATURE")
        request = CompleteRequest(
            model=agent.model or "",
            messages=messages,
            tools=[t.spec() for t in tools] or None,
            temperature=float(temperature) if temperature is not None else None,
            job_id=record.id,
            metadata=meta,
            call_index=state.calls,
            provider_config=options.provider_config if options is not None else None,
        )
        traced = agent_trace.tracing(ctx)
        if traced:
            agent_trace.add(
                ctx,
                "llm.request",
                model=request.model,
                messages=msgspec.to_builtins(messages),
                tools=[t.name for t in tools],
                metadata=meta,
                temperature=request.temperature,
            )
        try:
            reply = await self.model.complete(request)
        except ServiceUnavailableError as exc:
            raise RetryStep(str(exc)) from None
        except StatekError as exc:
            raise HarnessError(f"LLM call failed: {exc}") from None
        if traced:
            agent_trace.add(
                ctx,
                "llm.response",
                model=reply.model,
                text=reply.text,
                reasoning=reply.reasoning,
                usage=msgspec.to_builtins(reply.usage),
            )
            if reply.tool_calls:
                agent_trace.add(ctx, "llm.parsed_tool_calls", calls=msgspec.to_builtins(reply.tool_calls))
        usage = record.usage
        usage.llm_calls += 1
        usage.input_tokens += reply.usage.input_tokens
        usage.output_tokens += reply.usage.output_tokens
        usage.cached_tokens += reply.usage.cached_tokens
        usage.cost += reply.usage.cost
        usage.bytes_sent += len(msgspec.json.encode(request))
        usage.bytes_received += len(msgspec.json.encode(reply))
        used = reply.usage.input_tokens + reply.usage.output_tokens
        if not used:
            sent = sum(len(m.content or "") for m in messages) + len(prompt)
            used = (sent + len(reply.text)) // 4
        state.tokens += used
        state.turns += 1
        state.calls += 1
        return reply

    def _done(self, new: JobRecord, state: EngineState, trace: StepTrace, consumed: int) -> StepOutcome:
        new.step = trace.step + 1
        new.updated_at = utcnow()
        state.last = trace
        store_state(new, state)
        dialog = [i.dialog for i in state.log[trace.log_from :] if i.dialog]
        return StepOutcome(record=new, consumed=consumed, dialog=dialog, state=state)


def _shown(limit: float) -> str:
    """A harness limit in a message: ``5``, or ``3.50`` once extended per completion."""
    return str(int(limit)) if float(limit).is_integer() else f"{limit:.2f}"


def _raise_difficulty(state: EngineState, difficulty: str, step: int) -> None:
    """Record a difficulty change (STATEK's ``DifficultyChangeLogItem``) and extend the token limit
    by the tokens used so far, as STATEK does."""
    previous = state.difficulty
    state.difficulty = difficulty
    state.token_extension += state.tokens
    state.log.append(
        LogItem(
            kind="difficulty",
            step=step,
            text=f"Difficulty {previous} -> {difficulty} at {state.tokens} tokens; token limit +{state.tokens}",
            executed=True,
        )
    )


def _context_json(value: Any) -> Any:
    try:
        return to_json(value)
    except TypeError:
        return format_value(value)


async def _call_error_handlers(agent: Agent, handlers: list[dict[str, Any]], error: str) -> None:
    tools = {t.name: t for t in agent.all_tools()}
    for entry in handlers:
        t = tools.get(str(entry.get("tool")))
        if t is None or t.error_handler is None:
            continue
        try:
            result = await asyncio.to_thread(t.error_handler, from_json(entry.get("context")), error)
            if inspect.isawaitable(result):
                await result
        except Exception:  # STATEK swallows handler failures; we log them
            log.warning("error handler of tool %r failed", t.name, exc_info=True)


def _prompt_and_hint(
    agent: Agent, record: JobRecord, style: ChatStyle, difficulty: str
) -> tuple[str, str | None]:
    prompt = agent.system_prompt(
        params=record.params,
        shared_var_names=sorted(record.shared_vars),
        chat_style=style.value,
        difficulty=difficulty,
    )
    hint: str | None = None
    if record.locale:
        try:
            from statek_bus.wire.locale import get_language_hint, get_language_rule, resolve_locale

            lang = resolve_locale(record.locale).lang_code
            if str(agent.metadata.get("AUTO_LANG_RULE", "TRUE")).upper() != "FALSE":
                rule = get_language_rule(lang)
                if rule:
                    prompt = f"{prompt}\n\n{rule}" if prompt else rule
            if str(agent.metadata.get("AUTO_LANG_HINT", "TRUE")).upper() != "FALSE":
                hint = get_language_hint(lang)
        except (ImportError, ValueError):
            pass
    return prompt, hint
