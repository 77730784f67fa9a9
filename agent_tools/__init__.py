"""Agent tools: the music tools shared by the MCP server, LangChain and the CLI."""
