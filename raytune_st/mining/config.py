"""Config of the mine job: sentence-transformers' mine_hard_negatives, spread over a Ray cluster.

The ``mine`` section holds every parameter of ``mine_hard_negatives`` under its own name,
default and meaning; the other sections say where the data is and how to distribute it.
:func:`MineConfig.check_inputs` validates everything that can be checked without embedding
(data columns and types, the FAISS factory string, the output directory, the models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from raytune_st.config.core import option
from raytune_st.config.effects import PLACEMENT
from raytune_st.config.resources import check_custom_resources, check_resources
from raytune_st.data.sources import Source
from raytune_st.errors import ConfigError, DataError
from raytune_st.mining.select import FAISS_GPU_MAX_K, candidates_per_query, range_problem
from raytune_st.models.config import ModelConfig

# sentence-transformers logs its warnings about mine_hard_negatives' parameters here; raytune_st
# logs the same ones under the same name, so a user's logging setup treats both alike.
ST_LOGGER = "sentence_transformers.util.hard_negatives"


@dataclass
class PairsSource(Source):
    """The (anchor, positive) pairs: a data source plus which columns play which role."""

    anchor_column_name: Optional[str] = option(None, help="column of the anchors/queries; default: the first column")
    positive_column_name: Optional[str] = option(None, help="column of the positives; default: the second column")


@dataclass
class CorpusSource(Source):
    """Extra passages to draw negatives from (the positives are always part of the corpus)."""

    column: Optional[str] = option(None, help="column of the passages; default: the first column")


@dataclass
class MineSection:
    """sentence_transformers.util.mine_hard_negatives' parameters, same names, defaults and meaning."""

    range_min: int = option(0, help="skip this many of the closest candidates (counted after filtering)")
    range_max: Optional[int] = option(
        None, help="consider only this many closest candidates; default: range_min + num_negatives (x10 with a margin or max_score) + max positives per query"
    )
    max_score: Optional[float] = option(None, help="discard candidates scoring above this")
    min_score: Optional[float] = option(None, help="discard candidates scoring below this")
    absolute_margin: Optional[float] = option(
        None, help="discard candidates scoring above (lowest positive score - absolute_margin)"
    )
    relative_margin: Optional[float] = option(
        None, help="discard candidates scoring above (lowest positive score - |lowest positive score| * relative_margin)"
    )
    num_negatives: int = option(3, help="negatives per query")
    sampling_strategy: Literal["top", "random"] = option("top", help="top: the best candidates; random: a sample of them")
    query_prompt_name: Optional[str] = option(None, help="name of a model prompt for the anchors")
    query_prompt: Optional[str] = option(None, help="literal prompt prepended to the anchors (overrides query_prompt_name)")
    corpus_prompt_name: Optional[str] = option(None, help="name of a model prompt for the corpus")
    corpus_prompt: Optional[str] = option(None, help="literal prompt prepended to the corpus (overrides corpus_prompt_name)")
    include_positives: bool = option(False, help="keep the positives among the candidates (forces output_format n-tuple)")
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = option(
        "triplet", help="triplet | n-tuple | labeled-pair | labeled-list (as in sentence-transformers)"
    )
    output_scores: bool = option(False, help="add the similarity scores to the output")
    batch_size: int = option(32, help="encoding (and cross-encoder) batch size")
    seed: int = option(0, help="seed of sampling_strategy=random (sentence-transformers has none)")

    def __post_init__(self) -> None:
        problem = range_problem(self.range_min, self.range_max, self.num_negatives)
        if problem:
            raise ConfigError(problem)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")

    @property
    def effective_output_format(self) -> str:
        # sentence-transformers switches to n-tuple so the ranking of the positives is kept.
        return "n-tuple" if self.include_positives else self.output_format

    def warnings(self) -> list[str]:
        """The warnings sentence-transformers' mine_hard_negatives logs for these parameters, word for word."""
        if not self.include_positives:
            return []
        filtered = (
            self.range_min != 0 or self.range_max is not None or self.max_score is not None or self.min_score is not None
            or self.absolute_margin is not None or self.relative_margin is not None or self.sampling_strategy != "top"
        )
        return include_positives_warnings(filtered, self.output_format)


def include_positives_warnings(filtered: bool, output_format: str) -> list[str]:
    """What sentence-transformers logs for include_positives=True: `filtered` when a filter or
    sampling setting is off its default, `output_format` as asked."""
    said = []
    if filtered:
        said.append(
            "When using `include_positives=True`, updating `range_min`, `range_max`, `max_score`, `min_score`, "
            "`absolute_margin`, `relative_margin`, or `sampling_strategy` from the default values may still "
            "discard the positive values."
        )
    if output_format != "n-tuple":
        said.append(
            'When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to ensure that the ranking order is preserved.'
        )
    return said


@dataclass
class IndexSection:
    """The FAISS index, split into shards that each live in one Ray actor."""

    factory: str = option("Flat", help="faiss.index_factory string (inner product): Flat (exact), IVF1024,Flat, HNSW32, IVF256,PQ16, ...")
    shards: int = option(1, help="index shards, one actor each, each over a contiguous slice of the corpus")
    use_gpu: Optional[bool] = option(
        None, effect=PLACEMENT, help="build the shards on GPU; default: when index.num_gpus > 0 and faiss has GPU support"
    )
    nprobe: Optional[int] = option(None, help="IVF cells to visit per query (IVF factories only)")
    search_params: Optional[str] = option(None, help="other faiss ParameterSpace settings, e.g. efSearch=128")
    train_sample_size: int = option(100_000, help="vectors each shard trains a trainable index (IVF, PQ) on")
    num_cpus: float = option(1.0, effect=PLACEMENT, help="CPUs reserved by each shard actor")
    num_gpus: float = option(0.0, effect=PLACEMENT, help="GPUs reserved by each shard actor")
    threads: Optional[int] = option(
        None,
        effect=PLACEMENT, help="FAISS threads per shard; default: its num_cpus plus its share of the mining tasks' CPUs (they wait on its search), rounded down",
    )

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be at least 1, got {self.threads}")
        if self.shards < 1:
            raise ConfigError(f"shards: must be at least 1, got {self.shards}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ConfigError(f"nprobe: must be at least 1, got {self.nprobe}")
        if self.nprobe is not None and not any(kind in self.factory.upper() for kind in ("IVF", "IMI")):
            # Caught here, not by faiss after the whole corpus was embedded.
            raise ConfigError(
                f"nprobe: {self.factory!r} has no inverted-list cells to probe; remove index.nprobe "
                "or use an IVF factory such as IVF1024,Flat"
            )
        if self.train_sample_size < 1:
            raise ConfigError(f"train_sample_size: must be positive, got {self.train_sample_size}")
        check_resources("index.", num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        if self.use_gpu and self.num_gpus <= 0:
            raise ConfigError("use_gpu is true but num_gpus is 0; give each shard actor a GPU with index.num_gpus=1")

    @property
    def gpu(self) -> bool:
        """Whether the shards search on GPU (and so are bound by FAISS' 2048-neighbour limit)."""
        return self.use_gpu if self.use_gpu is not None else self.num_gpus > 0


@dataclass
class ComputeSection:
    """How the embedding, rescoring and mining work is spread over the cluster."""

    embed_actors_min: int = option(1, effect=PLACEMENT, help="embedding actors started while prepare runs, so their model load overlaps it")
    embed_actors_max: int = option(2, effect=PLACEMENT, help="most embedding actors (the pool grows to this once the work is known)")
    embed_num_cpus: float = option(1.0, effect=PLACEMENT, help="CPUs per embedding actor")
    embed_num_gpus: float = option(0.0, effect=PLACEMENT, help="GPUs per embedding actor")
    embed_chunk_rows: int = option(
        2048, help="texts per embedding-cache file; an actor embeds several at once (one length sort) as the work allows"
    )
    embedding_dtype: Literal["float32", "float16"] = option("float32", help="storage of the embedding shards")
    mine_batch_rows: int = option(2048, help="unique queries per mining batch (one output part file)")
    mine_tasks_in_flight: int = option(2, effect=PLACEMENT, help="mining batches processed at the same time")
    mine_num_cpus: float = option(0.5, effect=PLACEMENT, help="CPUs per mining task (it mostly waits for the index shards)")
    cross_encoder_actors: int = option(1, effect=PLACEMENT, help="cross-encoder rescoring actors")
    cross_encoder_num_cpus: float = option(1.0, effect=PLACEMENT, help="CPUs per cross-encoder actor")
    cross_encoder_num_gpus: float = option(0.0, effect=PLACEMENT, help="GPUs per cross-encoder actor")
    resources: dict[str, float] = option(
        default_factory=dict,
        effect=PLACEMENT, help="custom Ray resources that every task and actor of the job asks for, e.g. {worker_node: 0.01}: keeps the job on the nodes that have them",
    )

    def __post_init__(self) -> None:
        for name in ("embed_actors_min", "embed_actors_max", "embed_chunk_rows", "mine_batch_rows", "mine_tasks_in_flight", "cross_encoder_actors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        check_resources("compute.embed_", num_cpus=self.embed_num_cpus, num_gpus=self.embed_num_gpus)
        check_resources("compute.mine_", num_cpus=self.mine_num_cpus)
        check_resources("compute.cross_encoder_", num_cpus=self.cross_encoder_num_cpus, num_gpus=self.cross_encoder_num_gpus)
        check_custom_resources("compute.resources", self.resources, built_in_key="the *_num_cpus / *_num_gpus keys")
        if self.embed_actors_min > self.embed_actors_max:
            raise ConfigError(
                f"embed_actors_min ({self.embed_actors_min}) is larger than embed_actors_max ({self.embed_actors_max})"
            )


@dataclass
class MineOutput:
    """Where the mined data set and its statistics go."""

    path: str = option(help="output directory (local path or s3:// / gs:// URI): part-*.parquet, stats.json, config.yaml, scores.png")
    embeddings_dir: Optional[str] = option(
        None, help="embedding shard cache, keyed by model, prompts and texts; default: <path>/_work/embeddings"
    )
    overwrite: bool = option(False, help="replace the parts of an earlier run with other settings instead of refusing")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


@dataclass
class MineConfig:
    """raytune-st mine: add hard negatives to (anchor, positive) pairs, like sentence-transformers' mine_hard_negatives."""

    model: ModelConfig = option(help="the embedding model: a directory, a hub id, or {name, max_seq_length, ...}")
    dataset: PairsSource = option(help="the (anchor, positive) pairs: a source, plus anchor_column_name / positive_column_name")
    output: MineOutput = option(effect=PLACEMENT, help="output directory of the mined data set")
    cross_encoder: Optional[ModelConfig] = option(
        None, help="rescore every candidate and positive with this cross-encoder; its scores rank the negatives"
    )
    corpus: Optional[CorpusSource] = option(None, help="extra passages to draw negatives from (a source plus column)")
    mine: MineSection = option(default_factory=MineSection, help="mine_hard_negatives' parameters")
    index: IndexSection = option(default_factory=IndexSection, help="the sharded FAISS index")
    compute: ComputeSection = option(default_factory=ComputeSection, help="actors and batch sizes")
    ray_address: Optional[str] = option(None, effect=PLACEMENT, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        if self.model.type == "cross_encoder":
            raise ConfigError("model.type: the embedding model must be a bi_encoder; put a cross-encoder under cross_encoder")
        self.model.type = "bi_encoder"
        if self.cross_encoder is not None:
            if self.cross_encoder.type == "bi_encoder":
                raise ConfigError("cross_encoder.type: must be cross_encoder (or left out)")
            self.cross_encoder.type = "cross_encoder"
        if self.index.gpu and self.mine.range_max is not None and candidates_per_query(self.mine.range_max, 1) > FAISS_GPU_MAX_K:
            raise ConfigError(
                f"mine.range_max={self.mine.range_max} asks a GPU index for more than {FAISS_GPU_MAX_K} neighbours per query "
                f"(range_max plus the positives and the query itself), FAISS on GPU's limit; lower mine.range_max "
                "or set index.use_gpu=false"
            )
        check_factory(self.index.factory)

    def pair_columns(self) -> tuple[str, str]:
        """The (anchor, positive) column names, checked against the data's metadata."""
        from raytune_st.data.sources import inspect_source

        info = inspect_source(self.dataset)
        names = info.columns
        anchor = self.dataset.anchor_column_name
        positive = self.dataset.positive_column_name
        for key, name in (("anchor_column_name", anchor), ("positive_column_name", positive)):
            if name is not None and name not in names:
                raise DataError(f"dataset.{key}: {self.dataset.path!r} has no column {name!r}; its columns are {names}")
        if anchor is None:
            anchor = names[0]
        if positive is None:
            if len(names) < 2:
                raise DataError(
                    f"dataset {self.dataset.path!r} has only the column {names}; it needs (anchor, positive) columns"
                )
            positive = names[1]
        if anchor == positive:
            raise DataError(f"dataset: the anchor and positive column are both {anchor!r}; name two different columns")
        for role, name in (("anchor", anchor), ("positive", positive)):
            if info.types[name] not in ("string", "null"):
                raise DataError(
                    f"dataset: the {role} column {name!r} holds {info.types[name]}, expected text; "
                    "set dataset.anchor_column_name / positive_column_name to text columns"
                )
        return anchor, positive

    def corpus_column(self) -> Optional[str]:
        """The corpus' passage column, checked to be text; None without a corpus."""
        if self.corpus is None:
            return None
        from raytune_st.data.sources import inspect_source

        info = inspect_source(self.corpus)
        column = self.corpus.column or info.columns[0]
        if column not in info.columns:
            raise DataError(f"corpus.column: {self.corpus.path!r} has no column {column!r}; its columns are {info.columns}")
        if info.types[column] not in ("string", "null"):
            raise DataError(
                f"corpus: column {column!r} of {self.corpus.path!r} holds {info.types[column]}, not text; "
                "set corpus.column to the passage column"
            )
        return column

    def check_inputs(self) -> tuple[str, str, Optional[str]]:
        """Everything checkable before any heavy work: columns, types, models, output. Returns the columns."""
        from raytune_st.outputs import OutputDir

        anchor, positive = self.pair_columns()
        corpus_column = self.corpus_column()
        self.model.check()
        if self.cross_encoder is not None:
            self.cross_encoder.check()
        OutputDir(self.output.path).check_writable()
        return anchor, positive, corpus_column


# A dimension divisible by the usual PQ/OPQ sub-quantizer counts and large enough for PCA
# reductions, so that a string valid for real embeddings also parses here.
_PARSE_DIM = 960


def check_factory(factory: str) -> None:
    """Raise ConfigError when faiss cannot parse `factory` (checked on a small empty index)."""
    try:
        import faiss
    except ImportError:  # the driver may be a CPU head node without faiss; the shard actors check again
        return
    try:
        faiss.index_factory(_PARSE_DIM, factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # faiss raises RuntimeError with a C++ message
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"index.factory: faiss cannot build {factory!r} ({reason}); use a faiss.index_factory string such as "
            "Flat, IVF1024,Flat, HNSW32 or IVF256,PQ16"
        ) from None
