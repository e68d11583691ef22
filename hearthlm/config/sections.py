"""The configuration's sections for the model, sampling, retrieval, agents and the server: one
pydantic model each, every field described once (the docs' configuration page is written from
these descriptions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

# Sampling constraints live here once and are reused by the chat model's own fields.
Temperature = Annotated[
    float, Field(ge=0.0, description="Softmax temperature; 0 means greedy decoding.")
]
TopP = Annotated[
    float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass in (0, 1]; 1 disables it.")
]
TopK = Annotated[int, Field(ge=0, description="Keep only the k most likely tokens; 0 disables it.")]
MaxNewTokens = Annotated[int, Field(ge=1, description="Most tokens to generate per reply.")]
RepetitionPenalty = Annotated[
    float,
    Field(gt=0.0, description="Divide the logits of tokens already seen by this; 1 disables it."),
]
Seed = Annotated[int | None, Field(description="Random seed for sampling; None draws one.")]


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(StrictModel):
    """Which local model to run, and how."""

    backend: str = Field(
        "llamacpp",
        description="Inference backend: 'llamacpp' (fast chat), 'transformers', or 'openai' "
        "(a remote OpenAI-compatible server: vLLM, llama-server, Ollama, hearth serve).",
    )
    model: str | None = Field(
        None,
        description="A GGUF file or a Hugging Face model folder; None is the packaged SmolLM2.",
    )
    adapter: Path | None = Field(
        None, description="A PEFT adapter folder applied on top of the model."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weight dtype on the transformers backend."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to run; 'auto' takes CUDA when present."
    )
    context_size: int | None = Field(
        None, ge=64, description="Context window in tokens; None uses the model's own."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for llama.cpp; None uses all cores."
    )
    cache_dir: Path | None = Field(
        None, description="Where converted models are cached; None is the user cache folder."
    )
    truncation: Literal["error", "drop_oldest"] = Field(
        "error",
        description="When a chat does not fit the context: raise, or drop the oldest turns "
        "(always reported in the response metadata).",
    )
    parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Requests the llama.cpp backend decodes together, one batch a step, each in "
        "a sequence of context_size tokens (continuous batching; `hearth serve` sets "
        "serve.parallel). The transformers backend serves them one at a time.",
    )
    prefill_chunk: int = Field(
        128,
        ge=16,
        le=512,
        description="With parallel > 1: most prompt tokens evaluated in one step while other "
        "requests are decoding, so a long prompt does not freeze their streams.",
    )
    flash_attention: bool | None = Field(
        None,
        description="llama.cpp's flash attention, faster on CPU; a greedy reply may then differ "
        "where two tokens are nearly tied. Unset: on for the batched engine (parallel > 1, "
        "`hearth serve`), whose replies batching already changes at such ties; off for one "
        "request at a time, whose greedy replies then equal llama-cpp-python's own.",
    )
    base_url: str | None = Field(
        None,
        description="The 'openai' backend: the server's address, e.g. http://gpu-box:8000/v1 "
        "(vLLM, llama-server, hearth serve) or http://localhost:11434 (Ollama).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="The 'openai' backend: the server's key; None reads HEARTH_LLM__API_KEY, "
        "then OPENAI_API_KEY.",
    )
    server: Literal["vllm", "llamacpp", "ollama", "hearth", "generic"] = Field(
        "generic",
        description="The 'openai' backend: what serves the model, which says how grammars, JSON "
        "schemas and scoring requests are sent (see the README's capability table).",
    )
    timeout: float = Field(
        60.0, gt=0, description="The 'openai' backend: seconds to wait for the server."
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="The 'openai' backend: retries, with backoff, of a request that could not "
        "connect or got 408, 429 or 5xx before its reply began.",
    )
    tokenizer: str | None = Field(
        None,
        description="The 'openai' backend: a GGUF or Hugging Face folder with the served model's "
        "tokenizer and chat template (prompts are built here, so that grammars and scoring "
        "keep working); None is the packaged SmolLM2's. Checked against the server's own "
        "tokenizer where it has one.",
    )


class SamplingConfig(StrictModel):
    """How tokens are chosen. The same values mean the same thing on every backend."""

    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    max_new_tokens: MaxNewTokens = 512
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed = None


def default_data_dir() -> Path:
    """Where indexes and chat histories live unless configured: the user data folder."""
    import platformdirs

    return platformdirs.user_data_path("hearthlm")


class RetrievalConfig(StrictModel):
    """Documents in, cited answers out: loading, splitting, the index and search."""

    path: Path = Field(
        default_factory=lambda: default_data_dir() / "index",
        description="Folder of the embedded Chroma store and its BM25 and manifest sidecars.",
    )
    server: str | None = Field(
        None, description="URL of a `chroma run` server (http://host:port); None is embedded."
    )
    state: str | None = Field(
        None,
        description="Where the manifest, chunk texts and runs live: an SQLAlchemy URL "
        "(postgresql+psycopg://user@host/db for a team) or an SQLite file. None is an SQLite "
        "file beside the index, which only this machine sees: machines that index into one "
        "Chroma server, or query it with hybrid search, name one database here.",
    )
    collection: str = Field("docs", min_length=3, description="Chroma collection name.")
    embedder: str | None = Field(
        None, description="A sentence-transformers folder; None is the packaged MiniLM."
    )
    embed_batch_size: int = Field(
        16, ge=1, description="Texts per embedding batch (small batches pad less; fastest on CPU)."
    )
    embed_precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto",
        description="Embedder arithmetic. 'auto' is bfloat16 on CUDA and on CPUs with native "
        "bfloat16 (AVX512-BF16 or AMX), else float32. 'int8' is faster still on CPU but loses "
        "0.014 nDCG@10 on SciFact, so it is never chosen automatically.",
    )
    embed_backend: Literal["torch", "openvino"] = Field(
        "torch",
        description="What runs the embedder: PyTorch, or OpenVINO on the CPU (needs "
        "hearthlm[openvino]). OpenVINO's vectors match PyTorch float32's to a cosine of "
        "0.9999; on a 2-core Xeon with AMX it is as fast as PyTorch's bfloat16 (3.4x float32), "
        "with float32 precision 1.14x. A collection is queried with the backend it was "
        "indexed with.",
    )
    write_batch: int = Field(
        2048,
        ge=1,
        description="Chunks embedded and committed together; a killed run loses at "
        "most one batch of work.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Embedding device.")
    ray_actors: int | None = Field(
        None,
        ge=1,
        description="Embedding actors of `hearth index --ray`; None is one per GPU of the "
        "cluster, or one per ray_actor_cpus CPUs where it has none.",
    )
    ray_actor_cpus: float = Field(
        1.0, gt=0, description="CPUs each embedding actor of `hearth index --ray` takes."
    )
    chunk_tokens: int | None = Field(
        None, ge=16, description="Largest chunk in embedder tokens; None is the embedder's limit."
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by neighbouring chunks.")
    include: list[str] = Field(default_factory=lambda: ["**/*"], description="Globs to index.")
    exclude: list[str] = Field(default_factory=list, description="Globs to skip.")
    json_text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="Fields of a JSON record that hold text."
    )
    json_id_field: str | None = Field(None, description="Field of a JSON record with its id.")
    max_file_mb: float = Field(
        100.0, gt=0, description="Larger files are skipped, with the reason, without being read."
    )
    max_pdf_pages: int = Field(
        2000, ge=1, description="PDFs with more pages are skipped, with the reason."
    )
    search: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="Search mode.")
    fusion: Literal["rrf", "score"] = Field(
        "score",
        description="How hybrid search fuses the dense and BM25 rankings: weighted reciprocal-rank "
        "fusion, or min-max normalised scores with convex weights.",
    )
    dense_weight: float = Field(
        0.4, ge=0.0, le=1.0, description="The dense ranking's weight in fusion; BM25 gets the rest."
    )
    k: int = Field(4, ge=1, description="Chunks returned per query.")
    fetch_k: int = Field(40, ge=1, description="Candidates per search before fusion and MMR.")
    mmr: bool = Field(False, description="Diversify results with maximal marginal relevance.")
    mmr_lambda: float = Field(0.5, ge=0.0, le=1.0, description="1 is pure relevance.")
    score_threshold: float | None = Field(
        None, description="Drop chunks whose cosine similarity to the query is below this."
    )
    min_relevance: float = Field(
        0.3,
        description="Written answers (constrained, free) read only chunks of at least this "
        "cosine similarity, and with none the answer is 'I don't know' without a model call. "
        "Quote answers read every retrieved chunk and refuse by the relevance of their best "
        "sentence instead, which separates answerable questions better.",
    )
    answer: Literal["auto", "quote", "constrained", "free"] = Field(
        "auto",
        description="How the docs chatbot answers: 'quote' chooses verbatim sentences of the "
        "sources, 'constrained' writes one cited sentence under a grammar, 'free' writes freely. "
        "'auto' quotes on the packaged default model and writes on any other.",
    )
    on_ungrounded: Literal["flag", "quote"] = Field(
        "flag",
        description="A written answer that states a number, code or name its sources lack is "
        "flagged ('flag'), or also replaced by the quote answer ('quote').",
    )
    history_path: Path = Field(
        default_factory=lambda: default_data_dir() / "chat_history.sqlite",
        description="SQLite file holding chat sessions.",
    )


class AgentsConfig(StrictModel):
    """Agents: which tools, the web-search backend, and the limits of a run."""

    tools: list[str] = Field(
        default_factory=lambda: ["calculator"],
        description="Tools for `hearth agent`: calculator, web_search, docs, or plugin tools.",
    )
    search_backend: Literal["docs", "searxng", "duckduckgo"] = Field(
        "docs", description="web_search backend; 'docs' searches the local collection (offline)."
    )
    searxng_url: str | None = Field(None, description="Base URL of a SearxNG instance.")
    search_timeout: float = Field(10.0, gt=0, description="Seconds per search request.")
    search_retries: int = Field(2, ge=0, description="Retries after a failed search request.")
    search_results: int = Field(5, ge=1, description="Results returned per search.")
    max_steps: int = Field(6, ge=1, description="Most Thought/Action cycles per run.")
    max_seconds: float = Field(120.0, gt=0, description="Wall-clock limit per run.")
    max_tokens: int = Field(8000, ge=1, description="Generated-token limit per run.")


class APIKey(StrictModel):
    """One client key of `hearth serve` and the collections it may read and write."""

    key: SecretStr = Field(
        min_length=8, description="The secret a client sends as its Bearer token."
    )
    name: str | None = Field(
        None, description="Who holds it (shown in logs; owns its chat sessions); None: 'key-N'."
    )
    collections: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Collections this key may read and write; '*' is every collection.",
    )


class ServeConfig(StrictModel):
    """`hearth serve`: the HTTP server, its limits and who may use it."""

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free one).")
    api_keys: list[APIKey] = Field(
        default_factory=list,
        description="Client keys ([[serve.api_keys]] tables). None configured: no key is asked "
        "for, which is allowed only on a loopback address unless insecure is set.",
    )
    insecure: bool = Field(
        False, description="Allow binding a non-loopback address without any API key."
    )
    parallel: int = Field(
        8, ge=1, le=64, description="Requests decoded together in one batch (llm.parallel)."
    )
    max_queue: int = Field(
        32, ge=0, description="Requests that may wait beyond the running ones; past it, 429."
    )
    retry_after: int = Field(2, ge=1, description="Seconds a 429 tells the client to wait.")
    max_body_mb: float = Field(4.0, gt=0, description="Largest JSON request body.")
    max_upload_mb: float = Field(50.0, gt=0, description="Largest uploaded file.")
    max_upload_files: int = Field(20, ge=1, description="Most files in one upload request.")
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir() / "serve",
        description="Where uploaded files are kept, one folder per collection.",
    )
    sessions: str | None = Field(
        None,
        description="SQLAlchemy URL of the chat-session store; None: an SQLite file in data_dir.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS is off."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Models served beside the base one ([serve.adapters] name = path): a PEFT "
        "adapter folder (served by the transformers backend), a GGUF LoRA, or a merged GGUF.",
    )
    model_name: str | None = Field(
        None, description="The base model's id in /v1/models; None: its file name."
    )
    ui: bool = Field(True, description="Serve the web chat at /.")
    shutdown_grace: int = Field(
        10,
        ge=0,
        description="Seconds SIGTERM or Ctrl-C waits for the requests in flight to finish "
        "before it cancels them and closes the engines, the indexes and the session store.",
    )

    @model_validator(mode="after")
    def _distinct_keys(self) -> ServeConfig:
        """Each key's name owns its chat sessions, so two keys may share neither a name nor a
        secret."""
        names = [k.name or f"key-{i + 1}" for i, k in enumerate(self.api_keys)]
        secrets = [k.key.get_secret_value() for k in self.api_keys]
        twins = sorted({n for n in names if names.count(n) > 1})
        if twins:
            raise ValueError(
                f"serve.api_keys: the name(s) {twins} are given to more than one key; each "
                "key's name owns its chat sessions, so give every key its own name."
            )
        if len(set(secrets)) < len(secrets):
            raise ValueError("serve.api_keys: two keys have the same secret; give each its own.")
        return self
