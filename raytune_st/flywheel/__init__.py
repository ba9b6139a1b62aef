"""The pipeline job: the retriever flywheel (mine, teacher-score, denoise, train, evaluate, in rounds)."""
