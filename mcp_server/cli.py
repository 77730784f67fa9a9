"""`tinymu-mcp` (also `python -m mcp_server` and `tinymu serve mcp`): run the MCP server.

stdio by default, for clients that start the server themselves (Claude Desktop,
Claude Code, VS Code, Cursor). `--http` serves streamable HTTP at
http://HOST:PORT/mcp instead. Logs go to stderr; nothing but the protocol ever
reaches stdout.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from agent_tools.config import Settings, SettingsError

log = logging.getLogger("tinymu.mcp")

DEFAULT_TOKEN_ENV = "TINYMU_MCP_TOKEN"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    roots: Annotated[
        list[Path] | None,
        typer.Option(
            "--roots",
            help="Folder whose audio files the tools may read; repeat it, or join folders with the OS path "
            "separator. Default: the directory the server is started in.",
        ),
    ] = None,
    allow_urls: Annotated[
        bool, typer.Option("--allow-urls", help="Let tools fetch https:// URLs (public addresses only).")
    ] = False,
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP (endpoint /mcp) instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="HTTP bind address; non-loopback addresses require a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    token_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the bearer token HTTP clients must send."),
    ] = DEFAULT_TOKEN_ENV,
    cache_dir: Annotated[Path | None, typer.Option(help="Where cached analyses are stored.")] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra Host header accepted over HTTP (DNS-rebinding protection), e.g. 'music.lan:*'; repeatable."
        ),
    ] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Analyses or model calls computing at once.")] = None,
    call_timeout: Annotated[float | None, typer.Option(help="Per-call timeout in seconds.")] = None,
    dsp_workers: Annotated[
        int | None,
        typer.Option(help="Run madmom in this many worker processes (parallel analyses, a responsive server); "
                          "0 analyses in the server process."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    """Run the TinyMU MCP server (stdio by default; --http for streamable HTTP)."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = os.environ.get(token_env) or None
    if http and not is_loopback(host) and not token:
        typer.echo(
            f"Refusing to serve on {host} without a token: anyone on the network could use the server. "
            f"Set a bearer token in ${token_env} (or pick the variable with --token-env), or bind 127.0.0.1.",
            err=True,
        )
        raise typer.Exit(code=2)

    from mcp_server.server import build_server

    split_roots = tuple(Path(p) for root in roots or () for p in str(root).split(os.pathsep) if p)
    try:
        settings = Settings.from_env().with_overrides(
            roots=split_roots or None,
            allow_urls=allow_urls or None,
            cache_dir=cache_dir,
            max_concurrency=max_concurrency,
            call_timeout_s=call_timeout,
            dsp_workers=dsp_workers,
        )
    except SettingsError as error:  # one line that names the variable, not a traceback
        typer.echo(f"tinymu-mcp: {error}", err=True)
        raise typer.Exit(code=2) from None
    for root in settings.allowed_roots():
        if not root.is_dir():
            typer.echo(f"--roots: {root} is not a directory.", err=True)
            raise typer.Exit(code=2)

    # A local stdio server without configured roots would default to the folder its client happened to start
    # it in: there the client's own roots (its workspace folders) replace that default.
    server = build_server(settings, token=token if http else None, public_url=f"http://{host}:{port}",
                          replace_roots_with_clients=not http and not settings.roots)
    if server.toolbox.cache.warning:
        typer.echo(f"Warning: {server.toolbox.cache.warning}", err=True)
    # Load the madmom processors in the background so the first tool call does not pay for it
    # and the client's initialize handshake is answered at once.
    warm_up = None
    if settings.dsp_workers:
        from agent_tools.dsp_workers import start

        start(settings.dsp_workers)
    else:
        warm_up = threading.Thread(target=server.toolbox.analyzer.warm_up, name="warm-up", daemon=True)
        warm_up.start()
    if settings.preload_model:
        # The model loads in the background too (about 10 s with converted weights; the first start on a
        # machine also converts the GGUF, about a minute), so the first model call does not time out.
        from mcp_server.server import preload_model

        preload_model(server.toolbox)
    log.info("roots: %s; urls %s", ", ".join(map(str, settings.allowed_roots())), "on" if settings.allow_urls else "off")

    if not http:
        server.run()
        # A client that leaves at once (stdin closed) ends the server while the warm-up may still be in
        # native code (numpy's FFT, scipy); a daemon thread torn down there aborts the process ("terminate
        # called without an active exception", exit -6). Let it finish: seconds at most.
        if warm_up is not None:
            warm_up.join(timeout=60)
        return
    security = rebinding_protection(host, allowed_host or [])
    if host in ("0.0.0.0", "::") and not allowed_host:
        typer.echo(
            f"Note: bound to {host}; requests are accepted only with a loopback Host header until you name the "
            "server's address with --allowed-host (e.g. --allowed-host 'music.lan:*').",
            err=True,
        )
    typer.echo(f"TinyMU MCP server on http://{host}:{port}/mcp (auth: {'bearer token' if token else 'none'})", err=True)
    from mcp_server.http import serve_http

    # Not server.run: this one takes its body limit from the settings and closes silent connections.
    serve_http(server, settings, host=host, port=port, transport_security=security)


def rebinding_protection(host: str, extra_hosts: list[str]):
    """DNS-rebinding protection: only these Host (and Origin) headers are served; never switched off."""
    from mcp.server.transport_security import TransportSecuritySettings

    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in ("0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    hosts = list(dict.fromkeys([f"{name}:*" for name in names] + list(extra_hosts)))
    bare = [h.rsplit(":", 1)[0] if not h.endswith("]") else h for h in hosts]  # drop ports for origins
    origins = [f"{scheme}://{name}:*" for name in dict.fromkeys(bare) for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        import importlib.metadata

        print(f"tinymu-mcp {importlib.metadata.version('tinymu-agent-tools')}")
        return
    typer.run(serve)


if __name__ == "__main__":
    main()
