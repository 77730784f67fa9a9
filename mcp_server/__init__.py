"""The TinyMU MCP server: the agent_tools registry over stdio or streamable HTTP."""
