# The guide's "Trainer" example (MultipleNegativesRankingLoss on (anchor, positive, negative) triplets).
# MODEL, DATA (data_files for load_dataset) and OUTPUT_DIR are set by tests/test_trainer.py.
from datasets import load_dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainingArguments,
    SentenceTransformerModelCardData,
)
from sentence_transformers.losses import MultipleNegativesRankingLoss
from sentence_transformers.training_args import BatchSamplers
from sentence_transformers.evaluation import TripletEvaluator

from raytune_st import RayTrainer

# 1. Load a model to finetune with 2. (Optional) model card data
model = SentenceTransformer(
    MODEL,
    model_card_data=SentenceTransformerModelCardData(
        language="en",
        license="apache-2.0",
        model_name="MiniLM trained on Debian triplets",
    ),
)
model.max_seq_length = 64

# 3. Load a dataset to finetune on
dataset = load_dataset("parquet", data_files=DATA)
train_dataset = dataset["train"].select(range(256))
eval_dataset = dataset["dev"]
test_dataset = dataset["test"]

# 4. Define a loss function
loss = MultipleNegativesRankingLoss(model)

# 5. (Optional) Specify training arguments
args = SentenceTransformerTrainingArguments(
    # Required parameter:
    output_dir=OUTPUT_DIR,
    # Optional training parameters:
    max_steps=6,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,
    learning_rate=2e-5,
    warmup_ratio=0.1,
    fp16=False,  # Set to False if you get an error that your GPU can't run on FP16
    bf16=False,  # Set to True if you have a GPU that supports BF16
    batch_sampler=BatchSamplers.NO_DUPLICATES,  # MultipleNegativesRankingLoss benefits from no duplicate samples in a batch
    # Optional tracking/debugging parameters:
    eval_strategy="steps",
    eval_steps=3,
    save_strategy="steps",
    save_steps=3,
    save_total_limit=2,
    logging_steps=3,
    run_name="minilm-debian-triplet",
)

# 6. (Optional) Create an evaluator & evaluate the base model
dev_evaluator = TripletEvaluator(
    anchors=eval_dataset["anchor"],
    positives=eval_dataset["positive"],
    negatives=eval_dataset["negative"],
    name="debian-dev",
)
dev_evaluator(model)

# 7. Create a trainer & train
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

# (Optional) Evaluate the trained model on the test set
test_evaluator = TripletEvaluator(
    anchors=test_dataset["anchor"],
    positives=test_dataset["positive"],
    negatives=test_dataset["negative"],
    name="debian-test",
)
test_results = test_evaluator(model)
