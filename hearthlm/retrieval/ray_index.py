"""Indexing on Ray Data (``hearth index DIR --ray [ADDRESS]``, ``pip install 'hearthlm[scale]'``).

Files are hashed, loaded and split in Ray tasks; the chunks to embed go to a pool of actors,
each holding one embedder (on a GPU when the actor was given one); their vectors stream back to
this process, which writes them to Chroma and the shared state wave by wave, exactly as an
in-process run does. So a killed driver loses at most one wave, and the next run (in process or
on Ray, on any machine) completes it without duplicates.

With no address, a local Ray is started for the run and stopped after it; with one ("auto",
"ray://head:10001"), the run joins that cluster, whose workers need hearthlm installed.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hearthlm.config import RetrievalConfig
from hearthlm.errors import RetrievalError
from hearthlm.retrieval.embeddings import HearthEmbeddings
from hearthlm.retrieval.splitter import Chunk
from hearthlm.retrieval.work import FileRead, Work, read_file

READ_BATCH = 8  # files per read task
EMBED_BATCH = 256  # chunks per actor call


def _read_files(batch: dict[str, np.ndarray], work: bytes) -> dict[str, list[bytes]]:
    """A Ray task: read and split a batch of files (``work`` is the pickled splitter and
    loader options), each result pickled, since a FileRead is no Arrow type."""
    splitter, options = pickle.loads(work)
    reads = [
        read_file(Path(path), known or None, splitter, options)
        for path, known in zip(batch["path"], batch["known"], strict=True)
    ]
    return {"read": [pickle.dumps(r) for r in reads]}


class _Embedder:
    """A Ray actor: one embedder, loaded once, on the actor's GPU if it has one."""

    def __init__(self, config: str, name: str) -> None:
        from hearthlm.retrieval.embeddings import HearthEmbeddings

        self.embeddings = HearthEmbeddings.from_config(RetrievalConfig.model_validate_json(config))
        if self.embeddings.name != name:  # never mix two embedders' vectors in a collection
            raise RetrievalError(
                f"a Ray worker's embedder is {self.embeddings.name!r}, not {name!r}; install "
                "the same hearthlm and embedder on every node."
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        vectors = self.embeddings.encode([str(t) for t in batch["text"]])
        return {"id": batch["id"], "vector": np.asarray(vectors, dtype=np.float32)}


class RayWork(Work):
    """Reading in Ray tasks and embedding in a pool of Ray actors."""

    def __init__(
        self, config: RetrievalConfig, embeddings: HearthEmbeddings, address: str | None
    ) -> None:
        super().__init__(config, embeddings)
        try:
            import ray
        except ImportError:
            raise RetrievalError(
                "indexing on Ray needs Ray Data: pip install 'hearthlm[scale]'."
            ) from None
        self.ray = ray
        self.config = config
        self.name = embeddings.name
        self.address = address
        self._started = False
        self._restore: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> RayWork:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a local Ray"
                raise RetrievalError(
                    f"cannot start or reach {where}: {exc}. Give the address of a running "
                    "cluster (`ray start --head` prints it), or none for a local Ray."
                ) from None
            self._started = True
        from ray.data import DataContext

        # The run shows its own progress: Ray Data's bars and execution notes are off while it
        # lasts, and put back after, for a caller that uses Ray Data itself.
        context = DataContext.get_current()
        self._restore = [(context, "enable_progress_bars", context.enable_progress_bars)]
        context.enable_progress_bars = False
        data_log = logging.getLogger("ray.data")
        self._restore.append((data_log, "level", data_log.level))
        data_log.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attribute, value in self._restore:
            setattr(owner, attribute, value)
        if self._started:
            self.ray.shutdown()

    def _pool(self) -> tuple[int, float, float]:
        """Actors, CPUs and GPUs per actor: one actor per GPU where the cluster has GPUs,
        else one per ``retrieval.ray_actor_cpus`` CPUs (or ``retrieval.ray_actors``)."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = float(self.config.ray_actor_cpus)
        if gpus and self.config.device != "cpu":
            return self.config.ray_actors or gpus, cpus, 1.0
        actors = self.config.ray_actors or max(1, int(resources.get("CPU", 1) // cpus))
        return actors, cpus, 0.0

    def read(self, hashes: dict[Path, str | None]) -> Iterator[FileRead]:
        if not hashes:
            return
        ray = self.ray
        rows = [{"path": str(path), "known": known or ""} for path, known in hashes.items()]
        blocks = min(len(rows), max(1, math.ceil(len(rows) / READ_BATCH)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _read_files,
            batch_size=READ_BATCH,
            fn_kwargs={"work": pickle.dumps((self.splitter, self.options))},
        )
        for row in dataset.iter_rows():
            yield pickle.loads(row["read"])

    def embed(self, chunks: list[Chunk], wave: int) -> Iterator[tuple[list[Chunk], Any]]:
        if not chunks:
            return
        ray = self.ray
        actors, cpus, gpus = self._pool()
        by_id = {c.id: c for c in chunks}
        rows = [{"id": c.id, "text": c.text} for c in chunks]
        blocks = min(len(rows), max(actors * 2, math.ceil(len(rows) / EMBED_BATCH)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _Embedder,
            fn_constructor_kwargs={"config": self.config.model_dump_json(), "name": self.name},
            batch_size=EMBED_BATCH,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus,
            batch_format="numpy",
        )
        for batch in dataset.iter_batches(batch_size=wave, batch_format="numpy"):
            yield [by_id[str(i)] for i in batch["id"]], np.asarray(batch["vector"])
