"""raytune_st: train Sentence-Transformers models and mine their hard negatives at cluster scale with Ray.

Each job is a function taking its typed config (see ``raytune-st <job> --help-config``)::

    import raytune_st

    metrics = raytune_st.evaluate("examples/configs/evaluate-debian.yaml", ["model=demo-output/model/final"])
"""

__version__ = "0.1.0"


def _run(job: str, config, overrides=()):
    from raytune_st.cli import JOBS, load_job_config

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


def train(config, overrides=()):
    """Run the train job: `config` is a TrainConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("train", config, overrides)


def tune(config, overrides=()):
    """Run the tune job: `config` is a TuneConfig, a dict, or a YAML path (plus dotted overrides)."""
    return _run("tune", config, overrides)


__all__ = ["evaluate", "mine", "train", "tune", "__version__"]
