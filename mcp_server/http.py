"""Serving the MCP server over streamable HTTP with limits that match what it advertises.

`MCPServer.run(transport="streamable-http")` builds its own uvicorn config, which
leaves two gaps this module closes:

- the request-body limit is the SDK's 4 MiB default, while `music://roots`
  advertises `max_data_uri_bytes` of inline audio: the body limit here is derived
  from that same setting (`Settings.http_body_bytes`), so the advertised limit is
  the real one and a too-large data URI reaches the tool, which refuses it with a
  tool error instead of a protocol error;
- uvicorn closes an idle connection only after a response (keep-alive); a client
  that connects and never sends a request holds its socket forever. The protocol
  below arms the same timer when the connection is made.

It is uvicorn's httptools protocol (a C parser) on uvloop where those are installed
(they are dependencies), so accepting a connection and parsing a request cost the event
loop little while a burst of calls arrives: cached answers wait for the loop, not for
analyses (docs/reliability.md, the load benchmark).
"""

from __future__ import annotations

import uvicorn
from mcp.server.mcpserver import MCPServer

try:  # httptools is a dependency; h11 (pure Python) only where its wheel could not be installed
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornProtocol
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornProtocol

from agent_tools.config import Settings

# Seconds a connection may stay silent before its first request (and between requests).
IDLE_CONNECTION_S = 15.0


class ClosesSilentConnections(_UvicornProtocol):
    """uvicorn's HTTP protocol, with the keep-alive timeout also running before the first request."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


def http_config(server: MCPServer, settings: Settings, *, host: str, port: int, transport_security=None,
                idle_timeout_s: float = IDLE_CONNECTION_S, log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn config serving `server` at http://host:port/mcp with the settings' body limit."""
    app = server.streamable_http_app(max_request_body_size=settings.http_body_bytes,
                                     transport_security=transport_security, host=host)
    return uvicorn.Config(app, host=host, port=port, http=ClosesSilentConnections,
                          timeout_keep_alive=max(1, round(idle_timeout_s)), log_level=log_level)


def serve_http(server: MCPServer, settings: Settings, *, host: str, port: int, transport_security=None) -> None:
    """Serve until interrupted."""
    uvicorn.Server(http_config(server, settings, host=host, port=port, transport_security=transport_security)).run()
