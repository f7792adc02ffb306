"""The one configuration object. Built once per process (the ingress replica) and handed to the
node workers with each pool, so every process of a run sees the same settings; tests build
their own. Reads `SESAME_*` variables, plus the SDK variables we own a copy of
(`OPENAI_BASE_URL`, `COMPOSIO_API_KEY`, `COMPOSIO_BASE_URL`) so the SDKs never fall back to
an environment we did not mean."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from graph.limits import DEFAULT_LIMITS, Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESAME_", extra="ignore")

    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy.")
    port: int = Field(8000, description="HTTP port of the Serve proxy.")
    ray_address: str | None = Field(None, description="Ray cluster to join; unset = start a local one.")
    direct_ingress: bool = Field(
        True, description="With a Ray of its own, answer on SESAME_PORT straight from the ingress "
                          "replica (Serve's direct ingress) rather than through Serve's proxy.")

    workers: int = Field(2, ge=1, description="Node-worker actors in the pool (spread over the cluster).")
    worker_concurrency: int = Field(1000, ge=1, description="Concurrent node calls per worker actor.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")
    max_batch_bytes: int = Field(20_000_000, ge=1024, description="Largest accepted POST /batch body (413 above).")

    # Limits on one request (graph.limits; why these defaults: docs/design.md §9). Over one: a 422.
    max_json_depth: int = Field(DEFAULT_LIMITS.max_json_depth, ge=4, le=500,
                                description="Nesting of arrays and objects in the body.")
    max_nodes: int = Field(DEFAULT_LIMITS.max_nodes, ge=1, description="Nodes in one agent_config.")
    max_depth: int = Field(DEFAULT_LIMITS.max_depth, ge=1, description="Nodes on the longest chain of a graph.")
    max_children: int = Field(DEFAULT_LIMITS.max_children, ge=1, description="Children of one node.")
    max_text_chars: int = Field(DEFAULT_LIMITS.max_text_chars, ge=1,
                                description="Characters of user_query and of each template as sent.")
    max_rendered_chars: int = Field(DEFAULT_LIMITS.max_rendered_chars, ge=1,
                                    description="Characters of one node's prompt or arguments once rendered.")
    max_output_chars: int = Field(DEFAULT_LIMITS.max_output_chars, ge=1,
                                  description="Characters of one node's output (as JSON if structured) kept in a run.")

    llm_timeout_s: float = Field(60.0, gt=0, description="Timeout of one model call.")
    llm_clients_per_endpoint: int = Field(
        8, ge=1, le=64, description="SDK clients (connection pools) per model endpoint and key in each "
                                    "worker, used in turn: fewer connections per pool cost less CPU per call.")
    tool_timeout_s: float = Field(30.0, gt=0, description="Timeout of one Composio call.")
    node_timeout_s: float = Field(300.0, gt=0, description="Timeout of one node, retries included.")
    retry_attempts: int = Field(3, ge=1, description="Attempts for retryable errors (1 = no retry).")
    retry_base_delay_s: float = Field(0.5, ge=0, description="First backoff delay; doubles each retry, with jitter.")
    retry_max_delay_s: float = Field(10.0, ge=0, description="Cap on one backoff (and on Retry-After).")

    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("SESAME_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible server (vLLM, Ollama, llama.cpp); unset = api.openai.com.")
    composio_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SESAME_COMPOSIO_API_KEY", "COMPOSIO_API_KEY"),
        description="Composio API key; without it Composio tool nodes answer action_required.")
    composio_base_url: str | None = Field(
        None, validation_alias=AliasChoices("SESAME_COMPOSIO_BASE_URL", "COMPOSIO_BASE_URL"),
        description="Composio API base URL; unset = Composio's default.")
    composio_auth_configs: dict[str, str] = Field(
        default_factory=dict,
        description='Toolkit → Composio auth config id, e.g. {"gmail": "ac_123"}; '
                    "used to make fresh connect links.",
    )
    composio_toolkit_versions: dict[str, str] = Field(
        default_factory=dict,
        description='Toolkit → pinned Composio toolkit version, e.g. {"gmail": "20250909_00"}; '
                    "unpinned toolkits use the latest schema and execute with its version.")
    worker_threads: int = Field(64, ge=1, description="Threads per worker actor for blocking SDK calls.")

    database_url: str = Field(
        "sqlite:///sesame.db",
        description="Where runs and conversations are stored: sqlite:///path (relative to the "
                    "server's working directory) or postgresql://user:pass@host/db.")
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a Sesame process tells the store it is alive; its runs "
                               "become `interrupted` after three missed heartbeats.")
    conversation_wait_s: float = Field(
        300.0, ge=0, description="How long a run waits for another run of its conversation that "
                                 "reads memory; after that it fails with conversation_busy.")
    memory_max_turns: int = Field(20, ge=0, description="Earlier turns given to an LLM node (newest first).")
    memory_max_chars: int = Field(20_000, ge=0, description="Characters of earlier turns given to an LLM node.")
    sse_keepalive_s: float = Field(15.0, gt=0, description="Idle time after which an event stream sends a keep-alive.")

    api_keys: SecretStr | None = Field(
        None, description='Endpoint API keys, JSON {"<key>": "<tenant>"}; callers send '
                          "Authorization: Bearer <key>. Unset = no auth (loopback only).")
    allow_anonymous: bool = Field(
        False, description="Serve without API keys on a non-loopback address (open access).")
    max_runs_per_user: int = Field(
        200, ge=1, description="Runs in flight per (tenant, user) and process; more is a 429.")
    max_runs_in_flight: int = Field(
        5000, ge=1, description="Runs in flight per process; more is a 503.")
    run_deadline_s: float = Field(
        900.0, gt=0, description="Longest a run may take (a request's deadline_s may ask for less); "
                                 "then it ends with what finished and in-flight work is cancelled.")
    composio_tool_cache_s: float = Field(300.0, ge=0, description="How long toolkit schemas are cached.")
    composio_connection_cache_s: float = Field(
        60.0, ge=0, description="How long a user's ACTIVE Composio connection, once seen, is trusted "
                                "without asking Composio again (0 = ask every run).")

    # ---- LLM providers (nodes/providers.py) -----------------------------------------------
    provider_base_urls: dict[str, str] = Field(
        default_factory=dict,
        description='Provider → base URL, overriding the built-in one, e.g. {"ollama": '
                    '"http://gpu-box:11434/v1"}. Server keys are sent only to these (or the built-in) URLs.')
    anthropic_max_tokens: int = Field(
        1024, ge=1, description="max_tokens sent to Anthropic when a node's parameters have none "
                                "(the Messages API requires it).")

    # ---- outbound requests to addresses a request names (http tool, MCP URLs, node base_url) ---
    http_allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Hosts the http tool may call, e.g. ["api.example.com", "*.example.org"]; '
                    "empty = any host whose addresses are public.")
    http_allowed_networks: list[str] = Field(
        default_factory=list,
        description='Non-public networks that request-given URLs may reach anyway, e.g. '
                    '["10.1.2.0/24"] (loopback, private, link-local, multicast, unspecified and '
                    "cloud-metadata addresses are refused otherwise; a metadata address only if "
                    "listed as a single address).")
    http_timeout_s: float = Field(15.0, gt=0, description="Time limit of one http tool call, redirects included.")
    http_max_response_bytes: int = Field(1_000_000, ge=1, description="Largest http tool response body (larger fails the call).")
    http_max_redirects: int = Field(5, ge=0, description="Redirects an http tool call follows (each hop re-checked).")

    # ---- MCP tools ---------------------------------------------------------------------------
    mcp_servers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Named MCP servers a node may use with config.server: {"files": {"command": '
                    '"npx", "args": ["-y", "server"], "env": {...}}} (stdio) or {"url": "https://…/mcp", '
                    '"headers": {...}} (streamable HTTP). Commands run only from here, never from a request.')
    mcp_timeout_s: float = Field(30.0, gt=0, description="Time limit to connect to an MCP server and list its tools, and of one tool call.")
    mcp_tool_cache_s: float = Field(60.0, ge=0, description="How long an MCP server's tool list is cached per worker.")

    # ---- email (SMTP) ------------------------------------------------------------------------
    smtp_host: str | None = Field(None, description="SMTP server; unset = email tool nodes answer action_required.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 SSL, 25 plain).")
    smtp_starttls: bool = Field(True, description="Upgrade the connection with STARTTLS (ignored with smtp_ssl).")
    smtp_ssl: bool = Field(False, description="Connect with TLS from the start (port 465).")
    smtp_username: str | None = Field(None, description="SMTP AUTH user; unset = no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password (a secret: never logged or echoed).")
    smtp_from: str | None = Field(None, description="Sender address; unset = smtp_username.")
    smtp_ca_file: str | None = Field(None, description="PEM file of the CA (or self-signed certificate) to trust for the SMTP server; unset = the system's.")
    smtp_timeout_s: float = Field(30.0, gt=0, description="Time limit of one SMTP conversation.")

    # ---- python tool (off by default) ---------------------------------------------------------
    python_enabled: bool = Field(False, description="Allow python tool nodes to run code (off: they answer action_required).")
    python_cpu_s: int = Field(5, ge=1, description="CPU seconds one python tool call may use.")
    python_wall_s: float = Field(10.0, gt=0, description="Wall-clock seconds one python tool call may take.")
    python_memory_mb: int = Field(256, ge=32, description="Address-space limit (RLIMIT_AS) of one python tool call.")
    python_output_bytes: int = Field(65_536, ge=1024, description="Largest output (result + printed text) of one python tool call.")

    @property
    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in Limits.__dataclass_fields__})
