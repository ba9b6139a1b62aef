"""Data sources: every data set a config names, read as a streaming Ray Dataset."""
