"""raytune_st: train Sentence-Transformers models and mine their hard negatives at cluster scale with Ray.

Each job is a function taking its typed config (see ``raytune-st <job> --help-config``)::

    from raytune_st import evaluate
    from raytune_st.cli import load_job_config

    metrics = evaluate(load_job_config("evaluate", "examples/configs/evaluate-debian.yaml", ["model=..."]))
"""

__version__ = "0.1.0"


def mine(config):
    """Run the mine job (see raytune_st.mining.job.mine)."""
    from raytune_st.mining.job import mine as run

    return run(config)


def evaluate(config):
    """Run the evaluate job (see raytune_st.evaluation.job.evaluate)."""
    from raytune_st.evaluation.job import evaluate as run

    return run(config)


def train(config):
    """Run the train job (see raytune_st.train.job.train)."""
    from raytune_st.train.job import train as run

    return run(config)


__all__ = ["mine", "evaluate", "train", "__version__"]
