#!/bin/sh
# Register the TinyMU MCP server with Claude Code (run once; `claude mcp list` shows it).
# The tools may read audio under the given folder; `tinymu-mcp` must be on PATH
# (activate the project's virtual environment, or give the full path of .venv/bin/tinymu-mcp).
set -e

# Local server over stdio, started by Claude Code itself:
claude mcp add tinymu -- tinymu-mcp --roots "$HOME/Music"

# Or a shared server over streamable HTTP (start it with
#   TINYMU_MCP_TOKEN=secret tinymu-mcp --http --port 8000 --roots /srv/music):
# claude mcp add --transport http tinymu-http http://127.0.0.1:8000/mcp \
#   --header "Authorization: Bearer $TINYMU_MCP_TOKEN"
