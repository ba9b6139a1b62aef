"""Ray Tune sweeps over whole distributed training runs."""
