"""raytune_st: train Sentence-Transformers models and mine their hard negatives at cluster scale with Ray.

Each job is a function taking its typed config (see ``raytune-st <job> --help-config``)::

    import raytune_st

    metrics = raytune_st.evaluate("examples/configs/evaluate-debian.yaml", ["model=demo-output/model/final"])
"""

import types

__version__ = "0.1.0"


def _run(job: str, config, overrides=()):
    from raytune_st.registry import JOBS, load_job_config

    config_cls, run = JOBS[job].load()
    if not isinstance(config, config_cls):
        if isinstance(config, dict):
            from raytune_st.config import apply_overrides, build

            config = build(config_cls, apply_overrides(config, overrides, config_cls))
        else:
            config = load_job_config(job, config, overrides)
    elif overrides:
        raise TypeError("overrides apply to a YAML path or a dict, not to a built config")
    return run(config)


def evaluate(config, overrides=()):
    """Run the evaluate job: `config` is an EvaluateConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("evaluate", config, overrides)


def mine(config, overrides=()):
    """Run the mine job: `config` is a MineConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("mine", config, overrides)


def pipeline(config, overrides=()):
    """Run the pipeline job: `config` is a PipelineConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("pipeline", config, overrides)


def score(config, overrides=()):
    """Run the score job: `config` is a ScoreConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("score", config, overrides)


def __getattr__(name):
    # ``raytune_st.mine_hard_negatives``: sentence-transformers' function, same signature and
    # return type, on Ray; imported on first use (PEP 562) so that `import raytune_st` stays light.
    if name == "mine_hard_negatives":
        from raytune_st.mining.hard_negatives import mine_hard_negatives

        return mine_hard_negatives
    if name == "RayTrainer":  # sentence-transformers' trainer constructor, run as the train job
        from raytune_st.trainer import RayTrainer

        return RayTrainer
    raise AttributeError(f"module 'raytune_st' has no attribute {name!r}")


class JobPackage(types.ModuleType):
    """A subpackage that is also its job's function: ``raytune_st.train`` is both the package
    raytune_st/train/ and ``raytune_st.train(config)`` (likewise ``tune``).

    Python rebinds ``raytune_st.train`` to the subpackage whenever anything imports
    ``raytune_st.train.<module>``, so a plain function of that name would vanish depending on
    import order; the package itself is callable instead.
    """

    def __call__(self, config, overrides=()):
        """Run the job: `config` is its typed config, a dict, or a YAML path (plus dotted overrides)."""
        return _run(self.__name__.rpartition(".")[2], config, overrides)


from raytune_st import train, tune  # noqa: E402  (the callable job packages; both import lazily)

__all__ = ["RayTrainer", "evaluate", "mine", "mine_hard_negatives", "pipeline", "score", "train", "tune", "__version__"]
