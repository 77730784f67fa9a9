"""`python -m mcp_server`: the same as the `tinymu-mcp` console script."""

from mcp_server.cli import main

main()
