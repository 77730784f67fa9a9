"""LangChain tools built from the same toolbox and registry the MCP server uses.

`build_toolkit(settings)` turns every entry of `agent_tools.tools.TOOL_SPECS`
into a `StructuredTool`: the argument schema comes from the method signature
(the same pydantic `Field` descriptions the MCP server publishes), the
description is the method's docstring, and the result is
`content_and_artifact`: the agent's LLM reads the same text an MCP client's does
(`agent_tools.digest`: the summary plus the compact timed facts, e.g. chord changes
with their times; the full JSON too with `detail=True`), code gets the full
structured result as a dict in `ToolMessage.artifact`.

Failures the agent can fix (bad path, unsupported audio, model unavailable)
come back as error `ToolMessage`s with an actionable message instead of
crashing the run; `recoverable_errors()` is middleware for `create_agent`
that does the same for any unexpected exception.

    from langchain.agents import create_agent
    from agent_tools.langchain_tools import build_toolkit, recoverable_errors

    agent = create_agent(model, tools=build_toolkit(), middleware=[recoverable_errors()])
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, create_model

from agent_tools.config import Settings
from agent_tools.digest import DETAIL, Detail, digest, takes_detail
from agent_tools.tools import TOOL_SPECS, MusicTools, ToolSpec
from model.errors import TinyMUError

# Fields of a structured result that only code needs (raw bytes); kept out of the artifact dict.
BINARY_FIELDS = ("png",)


def _args_schema(spec: ToolSpec, method) -> type[BaseModel]:
    """A pydantic model of the method's arguments, keeping their Field descriptions and constraints."""
    hints = typing.get_type_hints(method, include_extras=True)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(method).parameters.items():
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (hints[name], default)
    if takes_detail(method):
        fields[DETAIL] = (Detail, False)
    model_name = "".join(part.title() for part in spec.name.split("_")) + "Input"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def _artifact(result: BaseModel) -> dict[str, Any]:
    return result.model_dump(mode="json", exclude=set(BINARY_FIELDS) & set(type(result).model_fields))


def _explain_invalid_arguments(name: str):
    """A handler that tells the agent which argument was wrong and how (instead of a bare 'validation error')."""

    def explain(error) -> str:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ())) or 'arguments'}: {e.get('msg', 'invalid')}"
            for e in error.errors()
        )
        return f"Invalid arguments for {name}: {problems}. Fix them and call {name} again."

    return explain


def as_langchain_tool(spec: ToolSpec, toolbox: MusicTools) -> StructuredTool:
    """One registry entry as a LangChain tool (sync and async; content = summary, artifact = full result)."""
    method = spec.bind(toolbox)

    def run(**kwargs: Any) -> tuple[str, dict[str, Any]]:
        detail = bool(kwargs.pop(DETAIL, False))
        try:
            result = method(**kwargs)
        except TinyMUError as exc:
            # Typed errors carry an actionable message: hand it to the agent as an error ToolMessage.
            raise ToolException(f"{type(exc).__name__}: {exc}") from exc
        return digest(result, detail=detail), _artifact(result)

    async def arun(**kwargs: Any) -> tuple[str, dict[str, Any]]:
        # The tool functions block (decoding, madmom, the model): keep the event loop free.
        return await asyncio.to_thread(run, **kwargs)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=spec.name,
        description=inspect.getdoc(method) or spec.title,
        args_schema=_args_schema(spec, method),
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=_explain_invalid_arguments(spec.name),
        metadata={"title": spec.title, "read_only": spec.read_only, "uses_model": spec.uses_model},
    )


def build_toolkit(
    settings: Settings | None = None, *, toolbox: MusicTools | None = None, names: list[str] | None = None
) -> list[StructuredTool]:
    """Every music tool as a LangChain tool, sharing one toolbox (warm DSP, one model, one cache).

    settings: allowed roots, cache directory and model backend (embedded, or remote via TINYMU_URL);
        defaults to `Settings.from_env()`.
    names: build only these tools (e.g. ["estimate_tempo", "detect_key"]) to keep an agent's menu short.
    """
    toolbox = toolbox or MusicTools(settings)
    specs = [s for s in TOOL_SPECS if names is None or s.name in names]
    unknown = set(names or ()) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"Unknown tool names {sorted(unknown)}; choose from {[s.name for s in TOOL_SPECS]}.")
    return [as_langchain_tool(spec, toolbox) for spec in specs]


def recoverable_errors():
    """`create_agent` middleware that turns any exception a tool raises into an error ToolMessage.

    The typed errors are already handled inside each tool; this catches the rest (a bug, a timeout) so
    one failed call does not end the agent's run, and tells the model what it may do next.
    """
    from langchain.agents.middleware import ToolErrorMiddleware

    def on_error(exc: Exception, request) -> str:
        name = request.tool_call["name"]
        return (
            f"Tool {name} failed ({type(exc).__name__}: {exc}). Check the arguments or try another tool; "
            "do not retry the same call unchanged."
        )

    return ToolErrorMiddleware(on_error)
