"""An evaluator of a user's own: the mean cosine similarity of each query with its passage."""

from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator


class MeanPairSimilarity(SentenceEvaluator):
    def __init__(self, query, passage, name: str = "", batch_size: int = 32):
        super().__init__()
        self.query, self.passage, self.name, self.batch_size = list(query), list(passage), name, batch_size
        self.primary_metric = "mean_similarity"

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        queries = model.encode(self.query, batch_size=self.batch_size, normalize_embeddings=True, convert_to_tensor=True)
        passages = model.encode(self.passage, batch_size=self.batch_size, normalize_embeddings=True, convert_to_tensor=True)
        metrics = {"mean_similarity": float((queries * passages).sum(dim=1).mean())}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


class NotAnEvaluator:
    def __init__(self, name: str = ""):
        self.name = name
