"""nginx configurations for the bench: the upstream, the TLS reverse proxy peer, the stream relays.

Owns: configuration text only (pure functions). The settings are the ones a
user would write for the job, the same for every variant, and none favours
either side: keep-alive to clients and to the upstream, no access log,
TLS 1.2/1.3 with a session cache, the same certificate type (lab CA, EC P-256)
as the edge serves.
"""
from __future__ import annotations

import os

__all__ = ["SMALL_BODY", "BIG_BODY", "write_bodies", "upstream_conf", "tls_proxy_conf", "stream_relay_conf"]

SMALL_BODY = 100
BIG_BODY = 64 * 1024
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def write_bodies(root: str) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "small"), "wb") as fh:
        fh.write(b"x" * (SMALL_BODY - 1) + b"\n")
    with open(os.path.join(root, "big"), "wb") as fh:
        fh.write((b"0123456789abcdef" * (BIG_BODY // 16))[: BIG_BODY - 1] + b"\n")


def _common(prefix: str, workers: int, *, stream: bool = False) -> str:
    head = f"load_module {STREAM_MODULE};\n" if stream else ""
    return (
        head
        + f"worker_processes {workers};\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "daemon off;\n"
        "worker_rlimit_nofile 8192;\n"
        "events { worker_connections 4096; }\n"
    )


def _http_common(prefix: str) -> str:
    return (
        "  access_log off;\n"
        "  sendfile on;\n"
        "  tcp_nodelay on;\n"
        "  keepalive_requests 1000000;\n"
        "  keepalive_timeout 65s;\n"
        f"  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;\n"
        f"  uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;\n"
        "  types { text/plain txt; } default_type text/plain;\n"
    )


def upstream_conf(prefix: str, port: int, root: str, workers: int = 1) -> str:
    """The local service behind both the edge path and the peer: static 100 B and 64 KiB bodies."""
    return (
        _common(prefix, workers)
        + "http {\n"
        + _http_common(prefix)
        + "  open_file_cache max=16;\n"
        f"  server {{ listen 127.0.0.1:{port} reuseport; root {root}; location / {{ }} }}\n"
        "}\n"
    )


def tls_proxy_conf(prefix: str, port: int, upstream_port: int, cert: str, key: str, workers: int,
                   server_name: str) -> str:
    """nginx as a TLS-terminating reverse proxy to the upstream: the edge's peer, doing what the edge
    does to each request and response as an ngrok-like proxy: keep-alive to the upstream (a pool, as the
    agent keeps its connections), Host kept, X-Forwarded-For/-Proto/-Host/-Port set, Via on responses."""
    return (
        _common(prefix, workers)
        + "http {\n"
        + _http_common(prefix)
        + f"  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port} ssl reuseport;\n"
        f"    server_name {server_name};\n"
        f"    ssl_certificate {cert};\n"
        f"    ssl_certificate_key {key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_session_cache shared:SSL:10m;\n"
        "    location / {\n"
        "      proxy_pass http://app;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "      proxy_set_header Host $host;\n"
        "      proxy_set_header X-Forwarded-For $remote_addr;\n"
        "      proxy_set_header X-Forwarded-Proto https;\n"
        "      proxy_set_header X-Forwarded-Host $host;\n"
        "      proxy_set_header X-Forwarded-Port $server_port;\n"
        # The edge adds its PoP to each response's Via (RFC 9110 7.6.3): the peer does the same.
        '      add_header Via "1.1 bench.lab.test" always;\n'
        "    }\n"
        "  }\n"
        "}\n"
    )


def stream_relay_conf(prefix: str, listen_port: int, target_port: int, *, listen_tls: tuple[str, str] | None = None,
                      connect_tls: bool = False, workers: int = 1) -> str:
    """One nginx `stream` relay; two of them with a TLS hop between are the tunnel's peer."""
    lines = [_common(prefix, workers, stream=True), "stream {\n"]
    lines.append("  server {\n")
    lines.append(f"    listen 127.0.0.1:{listen_port}{' ssl' if listen_tls else ''};\n")
    if listen_tls:
        lines.append(f"    ssl_certificate {listen_tls[0]};\n")
        lines.append(f"    ssl_certificate_key {listen_tls[1]};\n")
        lines.append("    ssl_protocols TLSv1.2 TLSv1.3;\n")
    lines.append(f"    proxy_pass 127.0.0.1:{target_port};\n")
    if connect_tls:
        lines.append("    proxy_ssl on;\n")
        lines.append("    proxy_ssl_protocols TLSv1.2 TLSv1.3;\n")
    lines.append("    proxy_buffer_size 256k;\n")
    lines.append("  }\n}\n")
    return "".join(lines)
