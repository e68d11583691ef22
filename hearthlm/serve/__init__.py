"""``hearth serve``: the OpenAI-compatible API, document collections, agent runs and a web chat,
one model instance behind a bounded queue, decoding its requests together."""

from hearthlm.serve.app import create_app, run

__all__ = ["create_app", "run"]
