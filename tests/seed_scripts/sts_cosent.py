# The guide's CoSENTLoss example on the STS benchmark: (sentence1, sentence2, score) pairs.
# MODEL, DATA (data_files for load_dataset) and OUTPUT_DIR are set by tests/test_trainer.py.
from datasets import load_dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator, SimilarityFunction
from sentence_transformers.losses import CoSENTLoss

from raytune_st import RayTrainer

# Load a model to train/finetune
model = SentenceTransformer(MODEL)
model.max_seq_length = 64

# Initialize the CoSENTLoss
# This loss requires pairs of text and a float similarity score as a label
loss = CoSENTLoss(model)

# Load an example training dataset that works with our loss function:
train_dataset = load_dataset("parquet", data_files=DATA, split="train").select(range(256))
eval_dataset = load_dataset("parquet", data_files=DATA, split="dev").select(range(200))

dev_evaluator = EmbeddingSimilarityEvaluator(
    sentences1=eval_dataset["sentence1"],
    sentences2=eval_dataset["sentence2"],
    scores=eval_dataset["score"],
    main_similarity=SimilarityFunction.COSINE,
    name="sts-dev",
)

args = SentenceTransformerTrainingArguments(
    output_dir=OUTPUT_DIR,
    max_steps=6,
    per_device_train_batch_size=16,
    learning_rate=2e-5,
    warmup_ratio=0.1,
    eval_strategy="steps",
    eval_steps=3,
    save_steps=3,
    logging_steps=3,
    seed=12,
)

trainer = RayTrainer(
    model=model,
    args=args,
    train_dataset=train_dataset,
    eval_dataset=eval_dataset,
    loss=loss,
    evaluator=dev_evaluator,
    scaling={"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
)
metrics = trainer.train()
