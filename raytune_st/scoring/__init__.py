"""The score job: a teacher's (or a bi-encoder's) scores for every (query, passage...) row."""
