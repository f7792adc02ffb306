"""Typed request and response models (DESIGN §2 and §4).

The request models accept the reference client's payload as-is: `"NONE"`, `null` and `""` mean
"not given" for optional fields, and unknown UI fields (`logo`, `code`, ...) are ignored. Checks
that span nodes (children, cycles, templates, kinds) live in `graph.validation`, not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

NodeId = str


def _absent_if_none_marker(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() in ("", "NONE")):
        return None
    return value


Optional = BeforeValidator(_absent_if_none_marker)


class RetryPolicy(BaseModel):
    """A node's own retry settings (each falls back to the server's SESAME_RETRY_*)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int | None = Field(None, ge=1, le=10)
    base_delay_s: float | None = Field(None, ge=0, le=60)
    max_delay_s: float | None = Field(None, ge=0, le=300)


def _type_is_required(schema: dict[str, Any]) -> None:
    # `type` has a default so that Python code may leave it out, but a request must send it.
    schema["required"] = ["type", *schema.get("required", [])]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra=_type_is_required)

    id: NodeId
    name: str = ""
    children: list[NodeId] = Field(default_factory=list)
    timeout_s: float | None = Field(None, gt=0, le=86_400)  # the node's own SESAME_NODE_TIMEOUT_S
    retry: RetryPolicy | None = None


class LLMNodeSpec(_Spec):
    type: Literal["LLM"] = "LLM"
    provider_name: str
    model_name: str
    system_prompt: Annotated[str | None, Optional] = None
    prompt_template: Annotated[str | None, Optional] = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    api_key_name: Annotated[str | None, Optional] = None
    api_key_value: Annotated[SecretStr | None, Optional] = None
    base_url: Annotated[str | None, Optional] = None  # any OpenAI-compatible (or Anthropic) server

    @property
    def kind(self) -> tuple[str, str]:
        return ("llm", self.provider_name.strip().lower())


class ToolNodeSpec(_Spec):
    type: Literal["Tool"] = "Tool"
    tool_name: str
    tool_type: str
    tool_description: Annotated[str | None, Optional] = None
    composio_connection: bool = False
    url: Annotated[str | None, Optional] = None
    request_id: Annotated[str | None, Optional] = None
    auth_params: Annotated[dict[str, Any] | None, Optional] = None
    input_schema: Annotated[dict[str, Any] | None, Optional] = None
    action: Annotated[str | None, Optional] = None
    arguments: Annotated[dict[str, Any] | None, Optional] = None
    # The python kind's program (a string, checked by that kind); for other kinds a UI field
    # that may hold anything, like `logo`.
    code: Annotated[Any, Optional] = None
    config: Annotated[dict[str, Any] | None, Optional] = None  # kind-specific (docs/node_kinds.md)

    @property
    def kind(self) -> tuple[str, str]:
        return ("tool", self.tool_type.strip().lower())


NodeSpec = LLMNodeSpec | ToolNodeSpec
SPEC_BY_TYPE: dict[str, type[_Spec]] = {"LLM": LLMNodeSpec, "Tool": ToolNodeSpec}


class RunRequest(BaseModel):
    """The body of `POST /` — used for the OpenAPI schema; parsing goes through validation."""

    model_config = ConfigDict(extra="ignore")

    agent_config: dict[NodeId, Annotated[LLMNodeSpec | ToolNodeSpec, Field(discriminator="type")]]
    user_query: str
    user_id: str
    conversation_id: str


# ---- response -------------------------------------------------------------------------------

# A run is `queued` (waiting for its conversation) or `running` until it ends in one of the
# terminal statuses; `interrupted` means the process running it stopped first.
RunStatus = Literal["queued", "running", "succeeded", "failed", "partial", "action_required",
                    "cancelled", "interrupted"]
TERMINAL_RUN_STATUSES = ("succeeded", "failed", "partial", "action_required", "cancelled", "interrupted")
NodeStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled",
                     "action_required"]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens,
                     total_tokens=self.total_tokens + other.total_tokens)


class ErrorInfo(BaseModel):
    code: str
    message: str
    retryable: bool = False


class ToolCall(BaseModel):
    """One function call a model emitted, routed to the Tool node that owns the action."""

    id: str
    action: str
    arguments: dict[str, Any]
    node_id: NodeId | None = None
    version: str | None = None


class Placement(BaseModel):
    """Where a node ran: the Ray node, the worker actor and its process."""

    ray_node_id: str
    actor_id: str
    pid: int


class ActionRequired(BaseModel):
    node_id: NodeId
    kind: str
    message: str
    url: str | None = None
    env_var: str | None = None


class NodeResult(BaseModel):
    id: NodeId
    name: str = ""
    type: str
    status: NodeStatus
    output: Any = None
    error: ErrorInfo | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: float | None = None
    placement: Placement | None = None
    skip_reason: str | None = None


class RunResponse(BaseModel):
    run_id: str
    status: RunStatus
    user_id: str
    conversation_id: str
    output: Any = None
    outputs: dict[NodeId, Any] = Field(default_factory=dict)
    nodes: dict[NodeId, NodeResult]
    action_required: list[ActionRequired] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float
    error: ErrorInfo | None = None  # why the run as a whole stopped (cancelled, interrupted, ...)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class RunAccepted(BaseModel):
    """202 answer of `POST /runs`: where to follow the run."""

    run_id: str
    status: RunStatus
    urls: dict[str, str]


class ConversationTurn(BaseModel):
    seq: int
    run_id: str
    created_at: float
    user_query: str
    output: str


class ConversationResponse(BaseModel):
    user_id: str
    conversation_id: str
    turns: list[ConversationTurn]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str
