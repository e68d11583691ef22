"""Configuration: one pydantic model per part, composed into :class:`HearthConfig`.

Values are layered, each layer overriding the one before:

1. the defaults below;
2. a TOML file (``--config PATH``, else ``$HEARTH_CONFIG``, else ``./hearth.toml`` if present);
3. environment variables ``HEARTH_<SECTION>__<FIELD>``, e.g. ``HEARTH_LLM__BACKEND=transformers``;
   ``none`` or ``null`` sets a field to None, e.g. ``HEARTH_LLM__ADAPTER=none``;
4. explicit overrides (CLI options, keyword arguments), as a nested dict or dotted keys.

pydantic-settings reads and merges the layers. The configuration is validated once, here, and
passed explicitly from then on.

Example:
    >>> cfg = load_config(overrides={"sampling.temperature": 0.0})
    >>> cfg.llm.backend
    'llamacpp'
"""

from hearthlm.config.jobs import (
    DataDefaults,
    DPOSettings,
    EvalConfig,
    FinetuneConfig,
    PairTraining,
    PPOConfig,
    Shape,
    TrainConfig,
)
from hearthlm.config.loading import (
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    HearthConfig,
    config_error_from,
    config_sources,
    load_config,
    validate_config,
)
from hearthlm.config.sections import (
    AgentsConfig,
    APIKey,
    LLMConfig,
    MaxNewTokens,
    RepetitionPenalty,
    RetrievalConfig,
    SamplingConfig,
    Seed,
    ServeConfig,
    StrictModel,
    Temperature,
    TopK,
    TopP,
    default_data_dir,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "APIKey",
    "AgentsConfig",
    "DPOSettings",
    "DataDefaults",
    "EvalConfig",
    "FinetuneConfig",
    "HearthConfig",
    "LLMConfig",
    "MaxNewTokens",
    "PPOConfig",
    "PairTraining",
    "RepetitionPenalty",
    "RetrievalConfig",
    "SamplingConfig",
    "Seed",
    "ServeConfig",
    "Shape",
    "StrictModel",
    "Temperature",
    "TopK",
    "TopP",
    "TrainConfig",
    "config_error_from",
    "config_sources",
    "default_data_dir",
    "load_config",
    "validate_config",
]
