"""A stand-in chat model for running the agent examples offline and in tests.

`ScriptedChatModel` is LangChain's `GenericFakeChatModel` driven by a policy: a
plain function that reads the conversation so far and returns the next
`AIMessage` (tool calls, or the final answer written from the tool results).
It makes the examples run without an API key; with a real provider configured
(`TINYMU_AGENT_MODEL`, see `chat_model()`), the same agents run on a real LLM.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

Policy = Callable[[list[BaseMessage]], AIMessage]
_call_ids = itertools.count(1)


class ScriptedChatModel(GenericFakeChatModel):
    """A fake tool-calling chat model whose next message is `policy(conversation)`."""

    policy: Policy
    messages: object = iter(())  # unused: the policy writes every message

    def bind_tools(self, tools, **kwargs):  # create_agent binds tools; the policy already knows them
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.policy(list(messages)))])


def call(name: str, **args) -> dict:
    """One tool call for an AIMessage."""
    return {"name": name, "args": args, "id": f"call_{next(_call_ids)}", "type": "tool_call"}


def tool_results(messages: list[BaseMessage]) -> list[ToolMessage]:
    """The tool messages since the last user turn."""
    return [m for m in messages if isinstance(m, ToolMessage)]


def chat_model(policy: Policy):
    """The real chat model named by TINYMU_AGENT_MODEL (e.g. 'anthropic:claude-sonnet-4-5',
    'openai:gpt-4.1-mini'; needs that provider's package and API key), else the scripted one."""
    name = os.environ.get("TINYMU_AGENT_MODEL")
    if name:
        from langchain.chat_models import init_chat_model

        return init_chat_model(name)
    return ScriptedChatModel(policy=policy)
