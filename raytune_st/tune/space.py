"""The search space: dotted training-config keys mapped to Ray Tune domains, checked up front.

Written in YAML as one domain per key::

    args.learning_rate: {loguniform: [1.0e-6, 1.0e-4]}
    args.per_device_train_batch_size: {choice: [16, 32, 64]}
    args.warmup_ratio: {uniform: [0.0, 0.2]}
    train_datasets.pairs.loss:
      choice:
        - MultipleNegativesRankingLoss
        - {loss: CachedMultipleNegativesRankingLoss, loss_kwargs: {mini_batch_size: 16}}
        - {loss: GISTEmbedLoss, loss_kwargs: {guide: sentence-transformers/all-MiniLM-L6-v2}}

A `choice` is searched as the index of the option, so every search algorithm (Optuna
included) can take options that are mappings; :func:`apply_params` turns sampled values back
into training-config overrides. Only :func:`to_tune_domain` imports Ray (Tune's search
spaces); the rest is pure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from raytune_st.config.core import missing_part, set_path, suggest
from raytune_st.errors import ConfigError

# domain name -> number of arguments (None: a non-empty list of options)
DOMAINS: dict[str, int | None] = {
    "loguniform": 2,
    "uniform": 2,
    "quniform": 3,
    "randint": 2,
    "choice": None,
    "grid": None,
}


@dataclass(frozen=True)
class Domain:
    key: str  # dotted training-config key
    kind: str  # one of DOMAINS
    args: tuple[Any, ...]

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    def label(self, value: Any) -> Any:
        """The value as a person reads it: an option instead of its index, a loss by its name."""
        if not self.categorical:
            return value
        option = self.args[value]
        if isinstance(option, Mapping) and "loss" in option:
            return option["loss"]
        return option

    def probe_values(self) -> list[Any]:
        """Values that stand for the whole domain when checking a config: every option, or both bounds."""
        if self.categorical:
            return list(range(len(self.args)))
        if self.kind in ("uniform", "loguniform"):
            # These sample floats whatever the bounds are written as: probe with floats, so an
            # integer key (a batch size) is refused now rather than in the first trial.
            return [float(self.args[0]), float(self.args[1])]
        return [self.args[0], self.args[1]]


def parse_domain(key: str, spec: Any) -> Domain:
    """A Domain from its YAML form, checking the bounds; ConfigError names the key and the fix."""
    where = f"search.space.{key}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(
            f"{where}: write one domain as a mapping, e.g. {{loguniform: [1.0e-6, 1.0e-4]}} or {{choice: [16, 32]}}; "
            f"domains: {', '.join(DOMAINS)}"
        )
    (kind, args), = spec.items()
    if kind not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {kind!r}{suggest(str(kind), DOMAINS)}; domains: {', '.join(DOMAINS)}")
    if not isinstance(args, list):
        raise ConfigError(f"{where}: {kind} takes a list, e.g. {{{kind}: [...]}}, got {args!r}")
    arity = DOMAINS[kind]
    if arity is None:
        if not args:
            raise ConfigError(f"{where}: the {kind} list is empty; give at least one option")
        return Domain(key, kind, tuple(args))
    if len(args) != arity or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        shape = "[low, high, q]" if arity == 3 else "[low, high]"
        raise ConfigError(f"{where}: {kind} takes {arity} numbers {shape}, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform bounds must be positive (it samples log(x)), got [{low}, {high}]")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes integers [low, high) , got {args!r}")
    return Domain(key, kind, tuple(args))


def parse_space(space: Mapping[str, Any]) -> list[Domain]:
    if not space:
        raise ConfigError("search.space is empty; map at least one training key to a domain, e.g. args.learning_rate: {loguniform: [1.0e-6, 1.0e-4]}")
    return [parse_domain(key, spec) for key, spec in space.items()]


def check_key(train_data: Mapping[str, Any], key: str) -> None:
    """Refuse a dotted key that the training config does not have.

    `train_data` is the resolved training config as plain data (every field present, see
    :func:`raytune_st.config.to_dict`), so a key exists exactly when its path exists there.
    """
    parts = key.split(".")
    i = missing_part(train_data, parts)
    if i is not None:
        node: Any = train_data
        for part in parts[:i]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        part = parts[i]
        parent = ".".join(parts[:i]) or "the training config"
        choices = [str(c) for c in node] if isinstance(node, Mapping) else []
        raise ConfigError(
            f"search.space: {key!r} is not a key of the training config: {parent} has no {part!r}"
            f"{suggest(part, choices)}" + (f"; it has {', '.join(choices)}" if choices else "")
        )


def apply_params(train_data: Mapping[str, Any], domains: list[Domain], params: Mapping[str, Any]) -> dict[str, Any]:
    """The training config data with sampled `params` (choice indices resolved) applied.

    A loss option written {loss: X, loss_kwargs: {...}} sets both the loss and its kwargs.
    """
    data = copy.deepcopy(dict(train_data))
    for domain in domains:
        if domain.key not in params:
            continue
        value = params[domain.key]
        if domain.categorical:
            value = domain.args[int(value)]
        parts = domain.key.split(".")
        if parts[-1] == "loss" and isinstance(value, Mapping):
            unknown = set(value) - {"loss", "loss_kwargs"}
            if unknown or "loss" not in value:
                raise ConfigError(
                    f"search.space.{domain.key}: a loss option is a name or {{loss: Name, loss_kwargs: {{...}}}}, got {dict(value)!r}"
                )
            set_path(data, parts, value["loss"])
            set_path(data, parts[:-1] + ["loss_kwargs"], dict(value.get("loss_kwargs") or {}))
        else:
            if parts[-1] == "loss":
                # A bare loss name starts from no kwargs: the other options' kwargs do not fit it.
                set_path(data, parts[:-1] + ["loss_kwargs"], {})
            set_path(data, parts, copy.deepcopy(value))
    return data


def to_tune_domain(domain: Domain, search_alg: str) -> Any:
    """The ray.tune sampler for `domain` (imports Ray)."""
    from ray import tune

    if domain.categorical:
        indices = list(range(len(domain.args)))
        if domain.kind == "grid" or search_alg == "grid":
            return tune.grid_search(indices)
        return tune.choice(indices)
    low, high = domain.args[0], domain.args[1]
    if domain.kind == "loguniform":
        return tune.loguniform(low, high)
    if domain.kind == "uniform":
        return tune.uniform(low, high)
    if domain.kind == "quniform":
        return tune.quniform(low, high, domain.args[2])
    return tune.randint(low, high)
