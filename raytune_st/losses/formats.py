"""Which data-set columns each sentence-transformers loss needs, and a check against them.

sentence-transformers decides what a column means from its name and position alone: the
data collator takes the first column named one of :data:`LABEL_COLUMNS` as the label and
hands every other column, in order, to the loss as an input ("anchor", "positive", ...).
A data set with the wrong columns therefore fails deep inside ``forward`` on the first
batch, or worse, trains on the wrong thing without an error. :func:`check_dataset_for_loss`
refuses such a data set before any work starts, with one message that says what was found,
what the loss needs and how to fix it.

The table :data:`LOSS_FORMATS` transcribes the "Inputs" table of every loss class's
docstring in sentence-transformers 6.2 (and its ``forward`` where the two differ, see the
notes on single entries). Nothing here imports torch or sentence-transformers, except
:func:`resolve_loss_class`, so the check runs on a CPU-only head node.

Example::

    1. split_columns(["query", "answer", "score"], "bi_encoder")
       -> (["query", "answer"], "score")
    2. check_dataset_for_loss(["query", "answer", "score"], "CoSENTLoss", "bi_encoder")
       -> None (fits)
    3. check_dataset_for_loss(["query", "answer"], "MatryoshkaLoss", "bi_encoder",
                              inner_loss="MultipleNegativesRankingLoss")
       -> None (a wrapper is checked against the loss it wraps)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from raytune_st.config.core import suggest
from raytune_st.errors import ConfigError, DataError

ModelType = Literal["bi_encoder", "cross_encoder"]
MODEL_TYPES: tuple[str, ...] = ("bi_encoder", "cross_encoder")

# The names sentence-transformers' collators treat as the label column, in the order they are
# tried (sentence_transformers.base.data_collator.DEFAULT_LABEL_COLUMNS). Since 6.x both the
# bi-encoder and the cross-encoder collator use the same four names.
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "bi_encoder": ("label", "labels", "score", "scores"),
    "cross_encoder": ("label", "labels", "score", "scores"),
}

# The collator routes a batch to its data set's loss by this column and never feeds it to the model.
DATASET_NAME_COLUMN = "dataset_name"

LOSS_OVERVIEW_URL: dict[str, str] = {
    "bi_encoder": "https://sbert.net/docs/sentence_transformer/loss_overview.html",
    "cross_encoder": "https://sbert.net/docs/cross_encoder/loss_overview.html",
}

LabelRule = Literal["required", "optional", "none"]
LabelKind = Literal[
    "score",
    "unit_score",
    "binary",
    "class",
    "class_or_probs",
    "teacher_embedding",
    "margin",
    "teacher_scores",
    "score_list",
    "any",
]

# For each label kind: the column types that hold it (None: any type) and how to say it.
LABEL_KINDS: dict[str, tuple[frozenset[str] | None, str]] = {
    "score": (frozenset({"float", "int"}), "a float similarity score"),
    "unit_score": (
        frozenset({"float", "int", "bool"}),
        "a float score in [0, 1] (1 for a positive pair, 0 for a negative)",
    ),
    "binary": (frozenset({"int", "bool"}), "an integer 1 for a positive pair and 0 for a negative pair"),
    "class": (frozenset({"int"}), "an integer class id"),
    "class_or_probs": (frozenset({"int", "list<float>"}), "an integer class id or a list of class probabilities"),
    "teacher_embedding": (
        frozenset({"list<float>", "list<list<float>>"}),
        "the teacher's embedding of the text (a list of floats)",
    ),
    "margin": (
        frozenset({"float", "int", "list<float>", "list<int>"}),
        "the teacher's margin M(query, positive) - M(query, negative) or a list of teacher scores",
    ),
    "teacher_scores": (
        frozenset({"list<float>", "list<int>"}),
        "a list of teacher scores [M(query, positive), M(query, negative_1), ...]",
    ),
    "score_list": (
        frozenset({"list<float>", "list<int>", "list<bool>"}),
        "a list of relevance scores, one per document",
    ),
    "any": (None, "any value"),
}

TEXT_TYPE = "string"
TEXT_LIST_TYPE = "list<string>"


@dataclasses.dataclass(frozen=True)
class LossFormat:
    """The columns one loss class accepts, transcribed from its docstring's "Inputs" table."""

    name: str  # the class name in sentence-transformers
    model_type: ModelType
    inputs: str  # the input roles as the docstring names them, in column order
    min_inputs: int  # the fewest input (non-label) columns
    max_inputs: int | None  # the most input columns; None: any number >= min_inputs
    label: LabelRule = "none"  # whether a label column must, may or must not be present
    label_kind: LabelKind | None = None  # what the label holds, when there is one
    label_required_for_pairs: bool = False  # AnglELoss: pairs need a score, n-tuples do not
    listwise: bool = False  # cross-encoder (query, [doc_1, ..., doc_n]) inputs with a list of labels
    num_labels: tuple[int, int | None] | None = None  # (min, max) model output labels; None: no constraint
    needs_num_labels: bool = False  # the loss's own num_labels argument must be given (SoftmaxLoss)
    wrapper: bool = False  # takes an inner loss whose format applies
    incompatible_inner: frozenset[str] = frozenset()  # inner losses the wrapper's docstring rules out
    in_batch_negatives: bool = False  # other rows of the batch serve as negatives (no_duplicates batching)
    hint: str = ""  # one extra sentence for the error message

    def fits_count(self, n: int) -> bool:
        """Whether `n` input columns are in this loss's range."""
        return n >= self.min_inputs and (self.max_inputs is None or n <= self.max_inputs)

    def needs(self) -> str:
        """What the loss needs, as a phrase: '(anchor, positive) text columns and no label column'."""
        if self.wrapper:
            return "the columns of the loss it wraps"
        if self.listwise:
            columns = "a query text column and a list-of-documents column"
        else:
            columns = f"{self.inputs} text columns"
        if self.label == "none":
            return f"{columns} and no label column"
        kind = LABEL_KINDS[self.label_kind or "any"][1]
        if self.label_required_for_pairs:
            return f"{columns}, with a label column holding {kind} for pairs"
        if self.label == "optional":
            return f"{columns} and optionally a label column holding {kind}"
        return f"{columns} and a label column holding {kind}"


def _row(name: str, model_type: ModelType, inputs: str, min_inputs: int, max_inputs: int | None, **kw) -> LossFormat:
    """A table row, positional where every row has the field."""
    return LossFormat(
        name=name, model_type=model_type, inputs=inputs, min_inputs=min_inputs, max_inputs=max_inputs, **kw
    )


_NTUPLE = "(anchor, positive) or (anchor, positive, negative_1, ..., negative_n)"
_PAIR = "(input_A, input_B)"
_CACHED_INNER = frozenset(
    {"CachedMultipleNegativesRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss", "CachedGISTEmbedLoss"}
)
_LISTWISE = dict(
    listwise=True,
    label="required",
    label_kind="score_list",
    num_labels=(1, 1),
)
_ONE_OUTPUT = (1, 1)

_FORMATS: list[LossFormat] = [
    # --- bi-encoders: sentence_transformers.sentence_transformer.losses -------------------
    _row("MultipleNegativesRankingLoss", "bi_encoder", _NTUPLE, 2, None, in_batch_negatives=True),
    _row("CachedMultipleNegativesRankingLoss", "bi_encoder", _NTUPLE, 2, None, in_batch_negatives=True),
    # The docstrings list (anchor, positive) pairs only, but both now subclass the MNRL losses
    # and use extra negative columns, so n-tuples are accepted as the code does.
    _row("MultipleNegativesSymmetricRankingLoss", "bi_encoder", _NTUPLE, 2, None, in_batch_negatives=True),
    _row("CachedMultipleNegativesSymmetricRankingLoss", "bi_encoder", _NTUPLE, 2, None, in_batch_negatives=True),
    # forward raises for anything but 2 or 3 columns.
    _row(
        "GISTEmbedLoss",
        "bi_encoder",
        "(anchor, positive) or (anchor, positive, negative)",
        2,
        3,
        in_batch_negatives=True,
    ),
    _row("CachedGISTEmbedLoss", "bi_encoder", _NTUPLE, 2, None, in_batch_negatives=True),
    _row("MegaBatchMarginLoss", "bi_encoder", "(anchor, positive)", 2, 2, in_batch_negatives=True),
    _row("TripletLoss", "bi_encoder", "(anchor, positive, negative)", 3, 3),
    _row("ContrastiveLoss", "bi_encoder", "(anchor, positive/negative)", 2, 2, label="required", label_kind="binary"),
    _row(
        "OnlineContrastiveLoss",
        "bi_encoder",
        "(anchor, positive/negative)",
        2,
        2,
        label="required",
        label_kind="binary",
    ),
    _row("CoSENTLoss", "bi_encoder", _PAIR, 2, 2, label="required", label_kind="score"),
    _row(
        "AnglELoss",
        "bi_encoder",
        f"{_PAIR} or (anchor, positive, negative_1, ..., negative_n)",
        2,
        None,
        label="optional",
        label_kind="score",
        label_required_for_pairs=True,
    ),
    _row("CosineSimilarityLoss", "bi_encoder", _PAIR, 2, 2, label="required", label_kind="unit_score"),
    _row(
        "SoftmaxLoss",
        "bi_encoder",
        _PAIR,
        2,
        2,
        label="required",
        label_kind="class_or_probs",
        needs_num_labels=True,
    ),
    *[
        _row(
            name,
            "bi_encoder",
            "(text)",
            1,
            1,
            label="required",
            label_kind="class",
            hint="Each class needs at least 2 examples in the data set.",
        )
        for name in (
            "BatchAllTripletLoss",
            "BatchHardTripletLoss",
            "BatchHardSoftMarginTripletLoss",
            "BatchSemiHardTripletLoss",
        )
    ],
    # The class docstring's prose says "single inputs", but its Inputs table and forward take
    # (input_A, input_B) pairs; the label is derived from whether the two texts are equal.
    _row(
        "ContrastiveTensionLoss",
        "bi_encoder",
        "(input_A, input_B), identical texts for positive pairs",
        2,
        2,
        label="optional",
        label_kind="binary",
    ),
    # forward only reads the first column (the loss overview page says "(anchor, anchor) pairs").
    _row("ContrastiveTensionLossInBatchNegatives", "bi_encoder", "(text)", 1, 1, in_batch_negatives=True),
    # forward unpacks exactly two columns; the loss overview page also lists "single sentences".
    _row(
        "DenoisingAutoEncoderLoss",
        "bi_encoder",
        "(damaged_text, original_text)",
        2,
        2,
        hint=(
            "Make the damaged column from the original text with a noise transform, as in the "
            "DenoisingAutoEncoderLoss docstring example."
        ),
    ),
    _row(
        "MarginMSELoss",
        "bi_encoder",
        "(query, positive, negative_1, ..., negative_n)",
        3,
        None,
        label="required",
        label_kind="margin",
    ),
    _row(
        "DistillKLDivLoss",
        "bi_encoder",
        "(query, positive, negative_1, ..., negative_n)",
        3,
        None,
        label="required",
        label_kind="teacher_scores",
    ),
    _row("MSELoss", "bi_encoder", "(text_1, ..., text_n)", 1, None, label="required", label_kind="teacher_embedding"),
    _row(
        "EmbedDistillLoss",
        "bi_encoder",
        "(text_1, ..., text_n)",
        1,
        None,
        label="required",
        label_kind="teacher_embedding",
    ),
    _row("GlobalOrthogonalRegularizationLoss", "bi_encoder", "(text_1, ..., text_n)", 1, None),
    _row("MatryoshkaLoss", "bi_encoder", "any", 0, None, label="optional", label_kind="any", wrapper=True),
    _row(
        "Matryoshka2dLoss",
        "bi_encoder",
        "any",
        0,
        None,
        label="optional",
        label_kind="any",
        wrapper=True,
        incompatible_inner=_CACHED_INNER,
    ),
    _row(
        "AdaptiveLayerLoss",
        "bi_encoder",
        "any",
        0,
        None,
        label="optional",
        label_kind="any",
        wrapper=True,
        incompatible_inner=_CACHED_INNER | {"MegaBatchMarginLoss"},
    ),
    # --- cross-encoders: sentence_transformers.cross_encoder.losses ----------------------
    _row(
        "BinaryCrossEntropyLoss",
        "cross_encoder",
        "(query, passage)",
        2,
        2,
        label="required",
        label_kind="unit_score",
        num_labels=_ONE_OUTPUT,
    ),
    _row(
        "CrossEntropyLoss",
        "cross_encoder",
        _PAIR,
        2,
        2,
        label="required",
        label_kind="class",
        num_labels=(2, None),
    ),
    _row(
        "MultipleNegativesRankingLoss",
        "cross_encoder",
        _NTUPLE,
        2,
        None,
        num_labels=_ONE_OUTPUT,
        in_batch_negatives=True,
    ),
    _row(
        "CachedMultipleNegativesRankingLoss",
        "cross_encoder",
        _NTUPLE,
        2,
        None,
        num_labels=_ONE_OUTPUT,
        in_batch_negatives=True,
    ),
    _row(
        "MarginMSELoss",
        "cross_encoder",
        "(query, positive, negative_1, ..., negative_n)",
        3,
        None,
        label="required",
        label_kind="margin",
        num_labels=_ONE_OUTPUT,
    ),
    _row("MSELoss", "cross_encoder", _PAIR, 2, 2, label="required", label_kind="score", num_labels=_ONE_OUTPUT),
    *[
        _row(name, "cross_encoder", "(query, [doc_1, ..., doc_n])", 2, 2, **_LISTWISE)
        for name in ("ADRMSELoss", "LambdaLoss", "ListMLELoss", "PListMLELoss", "ListNetLoss", "RankNetLoss")
    ],
]

LOSS_FORMATS: dict[tuple[str, str], LossFormat] = {(f.model_type, f.name): f for f in _FORMATS}


# --- lookups -----------------------------------------------------------------------------


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model type {model_type!r} is not known; choose 'bi_encoder' or 'cross_encoder'"
            + suggest(str(model_type), MODEL_TYPES)
        )


def loss_names(model_type: str) -> list[str]:
    """The loss names in :data:`LOSS_FORMATS` for `model_type`, in table order."""
    return [name for (mt, name) in LOSS_FORMATS if mt == model_type]


def get_format(name: str, model_type: str) -> LossFormat:
    """The table entry for one loss; an unknown name raises ConfigError with the close names."""
    _check_model_type(model_type)
    fmt = LOSS_FORMATS.get((model_type, name))
    if fmt is not None:
        return fmt
    kind = model_type.replace("_", "-")
    other = "cross_encoder" if model_type == "bi_encoder" else "bi_encoder"
    message = f"{name!r} is not a sentence-transformers {kind} loss" + suggest(name, loss_names(model_type)) + "."
    if (other, name) in LOSS_FORMATS:
        message += f" It is a {other.replace('_', '-')} loss; check the model type."
    message += (
        f" The {kind} losses are listed in raytune_st.losses.LOSS_FORMATS and at {LOSS_OVERVIEW_URL[model_type]}."
    )
    raise ConfigError(message)


def declared_format(obj: Any, model_type: str, *, where: str) -> Optional[str]:
    """The built-in loss whose inputs a custom loss declares it takes (its ``loss_format``), or None."""
    name = getattr(obj, "loss_format", None)
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"{where}: loss_format must name a built-in loss, e.g. 'TripletLoss', got {name!r}")
    fmt = get_format(name, model_type)
    if fmt.wrapper:
        raise ConfigError(f"{where}: loss_format {name!r} is a wrapper; name the loss whose inputs it takes")
    return name


def resolve_format(loss: str, model_type: str, inner_loss: str | None = None) -> LossFormat | None:
    """The format that decides a data set's columns: the loss's own, or for a wrapper its inner loss's.

    A ``module:Name`` loss has the format of the built-in loss it declares (``loss_format``),
    else None: its columns cannot be checked.

    Raises ConfigError for an unknown name, a wrapper without `inner_loss`, an `inner_loss`
    given to a loss that wraps nothing, a wrapper as the inner loss, or an inner loss the
    wrapper's docstring rules out.
    """
    from raytune_st.components import import_object, is_import_path

    if is_import_path(loss):
        declared = declared_format(import_object(loss, what="loss"), model_type, where=f"loss {loss!r}")
        return None if declared is None else get_format(declared, model_type)
    fmt = get_format(loss, model_type)
    if not fmt.wrapper:
        if inner_loss is not None:
            raise ConfigError(
                f"{loss} does not wrap another loss, but inner_loss={inner_loss!r} was given; "
                f"remove inner_loss or pick a wrapper such as MatryoshkaLoss."
            )
        return fmt
    if inner_loss is None:
        raise ConfigError(
            f"{loss} wraps another loss and takes that loss's columns; name it with inner_loss, "
            f"e.g. inner_loss='MultipleNegativesRankingLoss'."
        )
    if is_import_path(inner_loss):
        # A custom inner loss: its declared format (checked as that loss would be), or unchecked.
        declared = resolve_format(inner_loss, model_type)
        if declared is not None and declared.name in fmt.incompatible_inner:
            raise ConfigError(
                f"{loss} cannot wrap {inner_loss}, which declares the inputs of {declared.name} (see the Requirements in "
                f"the {loss} docstring)"
            )
        return declared
    inner = get_format(inner_loss, model_type)
    if inner.wrapper:
        raise ConfigError(
            f"{loss} cannot wrap {inner_loss}, which is itself a wrapper; for Matryoshka dimensions "
            f"plus adaptive layers use Matryoshka2dLoss around a plain loss."
        )
    if inner_loss in fmt.incompatible_inner:
        raise ConfigError(
            f"{loss} cannot wrap {inner_loss} (see the Requirements in the {loss} docstring); "
            f"use its non-cached version instead"
            + (", e.g. MultipleNegativesRankingLoss." if "MultipleNegatives" in inner_loss else ".")
        )
    return inner


def resolve_loss_class(name: str, model_type: str) -> type:
    """The sentence-transformers class for a loss name, e.g. ('CoSENTLoss', 'bi_encoder') -> CoSENTLoss.

    Unknown names raise ConfigError listing the close names and where to find all of them.
    Imports sentence-transformers (and torch) on first call.
    """
    get_format(name, model_type)
    if model_type == "bi_encoder":
        from sentence_transformers.sentence_transformer import losses
    else:
        from sentence_transformers.cross_encoder import losses
    try:
        return getattr(losses, name)
    except AttributeError:
        raise ConfigError(
            f"{name} is in raytune_st's loss table but not in the installed sentence-transformers "
            f"({losses.__name__}); install the sentence-transformers version this raytune_st supports."
        ) from None


def is_in_batch_negatives_loss(name: str, model_type: str, *, inner_loss: str | None = None) -> bool:
    """Whether the loss (for a wrapper, its inner loss) uses the batch's other rows as negatives.

    Those losses want no_duplicates batching and, on several GPUs, gather_across_devices.
    """
    fmt = resolve_format(name, model_type, inner_loss)
    return fmt is not None and fmt.in_batch_negatives


# --- columns -----------------------------------------------------------------------------


def split_columns(columns: Sequence[str], model_type: str) -> tuple[list[str], str | None]:
    """Split a data set's columns the way sentence-transformers' collator does.

    Returns the input columns in their order (``dataset_name``, the multi-data-set routing
    column, is neither) and the label column, or None. More than one label column raises
    DataError: the collator would take the first as the label and train on the rest as text.
    """
    _check_model_type(model_type)
    label_names = LABEL_COLUMNS[model_type]
    labels = [c for c in columns if c in label_names]
    if len(labels) > 1:
        used = next(name for name in label_names if name in labels)
        raise DataError(
            f"columns {list(columns)} hold {len(labels)} label columns {labels}, but a data set can have "
            f"only one: sentence-transformers would take {used!r} as the label and train on the others as text. "
            f"Keep one label column with `columns:` in the source, or `rename:` the others."
        )
    inputs = [c for c in columns if c not in label_names and c != DATASET_NAME_COLUMN]
    return inputs, (labels[0] if labels else None)


_INT_TYPES = re.compile(r"u?int(8|16|32|64)?|long")
_FLOAT_TYPES = re.compile(r"float(16|32|64)?|double|halffloat|bfloat16")


def normalize_type(type_name: str) -> str:
    """A column type in this module's vocabulary: 'string', 'int', 'float', 'bool', 'null', 'list<...>'.

    Accepts Arrow / datasets spellings too (large_string, int64, float32, large_list<...>, sequence<...>).
    """
    t = type_name.strip().lower().replace(" ", "")
    match = re.fullmatch(r"(?:large_list|list|sequence)<(?:item:|element:)?(.+)>", t)
    if match:
        return f"list<{normalize_type(match.group(1))}>"
    if t in ("string", "large_string", "str", "utf8", "large_utf8", "text"):
        return "string"
    if t in ("bool", "boolean"):
        return "bool"
    if _INT_TYPES.fullmatch(t):
        return "int"
    if _FLOAT_TYPES.fullmatch(t):
        return "float"
    return t


def _label_type_problem(fmt: LossFormat, label: str, label_type: str, n_inputs: int) -> str | None:
    allowed, kind = LABEL_KINDS[fmt.label_kind or "any"]
    if label_type == "null":
        return f"the label column {label!r} holds only null values"
    if allowed is not None and label_type not in allowed:
        problem = f"the label column {label!r} holds {label_type} values, not {kind}"
        if fmt.model_type == "cross_encoder" and label_type.startswith("list<") and not fmt.listwise:
            problem += " (lists of labels for lists of documents fit a listwise loss such as LambdaLoss or ListNetLoss)"
        return problem
    if fmt.label_kind == "margin" and n_inputs > 3 and not label_type.startswith("list<"):
        return (
            f"the label column {label!r} holds one {label_type} per row, but with {n_inputs - 2} negatives "
            f"{fmt.name} needs a list: one margin per negative, or the teacher's scores for positive and every negative"
        )
    return None


def _input_type_problems(fmt: LossFormat, inputs: list[str], types: Mapping[str, str]) -> list[str]:
    problems = []
    for position, column in enumerate(inputs):
        if column not in types:
            continue
        found = types[column]
        expected = TEXT_LIST_TYPE if fmt.listwise and position == 1 else TEXT_TYPE
        if found == expected:
            continue
        if found == "null":
            problems.append(f"the input column {column!r} holds only null values")
        elif expected == TEXT_LIST_TYPE:
            problems.append(f"the documents column {column!r} holds {found} values, not lists of texts")
        elif found == TEXT_LIST_TYPE and fmt.model_type == "cross_encoder":
            problems.append(
                f"the input column {column!r} holds lists of texts, which only listwise losses such as "
                f"LambdaLoss or ListNetLoss take"
            )
        else:
            problems.append(f"the input column {column!r} holds {found} values, not text")
    return problems


def _problems(fmt: LossFormat, inputs: list[str], label: str | None, types: Mapping[str, str]) -> list[str]:
    """Every way the columns miss `fmt`, as clauses; empty when they fit."""
    problems = []
    n = len(inputs)
    if not fmt.fits_count(n):
        if fmt.max_inputs == fmt.min_inputs:
            expected = f"exactly {fmt.min_inputs}"
        elif fmt.max_inputs is None:
            expected = f"at least {fmt.min_inputs}"
        else:
            expected = f"{fmt.min_inputs} to {fmt.max_inputs}"
        problems.append(f"it has {n} input column{'s' if n != 1 else ''} {inputs}, {expected} expected")
    if label is None:
        if fmt.label == "required" or (fmt.label_required_for_pairs and n == 2):
            names = ", ".join(repr(c) for c in LABEL_COLUMNS[fmt.model_type])
            problems.append(f"it has no label column (one named {names})")
    elif fmt.label == "none":
        problems.append(f"it has a label column {label!r}, which {fmt.name} does not use")
    elif label in types:
        problem = _label_type_problem(fmt, label, types[label], n)
        if problem:
            problems.append(problem)
    problems.extend(_input_type_problems(fmt, inputs, types))
    return problems


def _check_num_labels(fmt: LossFormat, num_labels: int | None) -> None:
    if fmt.needs_num_labels and num_labels is None:
        raise ConfigError(
            f"{fmt.name} needs num_labels, the number of classes in the label column; "
            f"set it in the loss arguments, e.g. num_labels: 3."
        )
    if fmt.num_labels is None or num_labels is None:
        return
    low, high = fmt.num_labels
    if num_labels < low or (high is not None and num_labels > high):
        if low == high:
            expected = f"num_labels == {low} (one relevance score per pair)"
        else:
            expected = f"num_labels >= {low} (one output per class)"
        raise ConfigError(
            f"{fmt.name} needs a cross-encoder with {expected}, but num_labels is {num_labels}; "
            f"set the model's num_labels to match, or pick a loss for {num_labels} output labels."
        )


def check_dataset_for_loss(
    columns: Sequence[str],
    loss: str,
    model_type: str,
    *,
    inner_loss: str | None = None,
    num_labels: int | None = None,
    column_types: Mapping[str, str] | None = None,
    dataset: str = "train",
) -> None:
    """Refuse a data set whose columns the loss cannot train on.

    Args:
        columns: the data set's column names, in order (the order decides the roles).
        loss: a loss class name, e.g. "MultipleNegativesRankingLoss".
        model_type: "bi_encoder" or "cross_encoder".
        inner_loss: for a wrapper (MatryoshkaLoss, Matryoshka2dLoss, AdaptiveLayerLoss), the loss
            it wraps; the data set is checked against that loss.
        num_labels: the cross-encoder's number of output labels, or SoftmaxLoss's num_labels.
            None skips the check, except for SoftmaxLoss, which needs it.
        column_types: optional column -> type ("string", "int", "float", "list<string>",
            "list<float>", "null", ...); when given, label types and text inputs are checked.
        dataset: how the data set is named in the message, e.g. "train" or "train 'nli'".

    Raises:
        DataError: one message naming the columns found, what the loss needs and how to fix it.
        ConfigError: an unknown loss or wrapper misuse, or num_labels that the loss rules out.
    """
    fmt = resolve_format(loss, model_type, inner_loss)
    if fmt is None:
        return  # a custom loss that declares no format: the caller says the columns were not checked
    _check_num_labels(fmt, num_labels)
    inputs, label = split_columns(columns, model_type)
    types = {c: normalize_type(t) for c, t in (column_types or {}).items()}
    problems = _problems(fmt, inputs, label, types)
    if not problems:
        return

    shown = f"{loss}({fmt.name})" if inner_loss else fmt.name
    message = (
        f"The {dataset} data set has columns {list(columns)} but {shown} needs {fmt.needs()}: "
        + "; ".join(problems)
        + ". Use `columns:` in the source to select the columns the loss needs, in role order"
    )
    if fmt.label != "none":
        names = LABEL_COLUMNS[model_type]
        others = ", ".join(repr(name) for name in names[1:])
        message += f", and `rename:` to name the label column {names[0]!r} (or {others})."
    elif label is not None:
        message += ", leaving out the label column."
    else:
        message += "."
    if fmt.hint:
        message += " " + fmt.hint
    fitting = [
        other.name
        for other in LOSS_FORMATS.values()
        if other.model_type == model_type
        and not other.wrapper
        and other.name != fmt.name
        # Without types a listwise loss "fits" any (query, passage, label) data set; only offer it
        # when the second column is known to hold lists.
        and (not other.listwise or (len(inputs) > 1 and inputs[1] in types))
        and not _problems(other, inputs, label, types)
    ]
    if fitting:
        message += " Losses that take these columns as they are: " + ", ".join(fitting[:5]) + "."
    raise DataError(message)
