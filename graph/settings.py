"""The one configuration object. Built once per process (the ingress replica) and handed to the
node workers with each pool, so every process of a run sees the same settings; tests build
their own. Reads `SESAME_*` variables, plus the SDK variables we own a copy of
(`OPENAI_BASE_URL`, `COMPOSIO_API_KEY`, `COMPOSIO_BASE_URL`) so the SDKs never fall back to
an environment we did not mean."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from graph.limits import DEFAULT_LIMITS, Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESAME_", extra="ignore")

    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy.")
    port: int = Field(8000, description="HTTP port of the Serve proxy.")
    ray_address: str | None = Field(None, description="Ray cluster to join; unset = start a local one.")

    workers: int = Field(2, ge=1, description="Node-worker actors in the pool (spread over the cluster).")
    worker_concurrency: int = Field(1000, ge=1, description="Concurrent node calls per worker actor.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")

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
    composio_tool_cache_s: float = Field(300.0, ge=0, description="How long toolkit schemas are cached.")

    @property
    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in Limits.__dataclass_fields__})
