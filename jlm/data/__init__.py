"""Training data: judge samples -> augmented, tokenized, loss-masked examples -> grain batches."""
from jlm.data.examples import (
    TRUNCATABLE,
    ExampleConfig,
    View,
    augment,
    epoch_rng,
    epoch_summary,
    fit_view,
    make_example,
    swap_judgement,
    swap_sample,
)
from jlm.data.pipeline import (
    BATCH_KEYS,
    BucketedBatches,
    EpochExamples,
    default_buckets,
    example_arrays,
    pad_batch,
    shuffle_permutation,
    train_dataset,
)
from jlm.data.tokenizer import ByteTokenizer, TokenizerLike

__all__ = [
    "BATCH_KEYS",
    "TRUNCATABLE",
    "BucketedBatches",
    "ByteTokenizer",
    "EpochExamples",
    "ExampleConfig",
    "TokenizerLike",
    "View",
    "augment",
    "default_buckets",
    "epoch_rng",
    "epoch_summary",
    "example_arrays",
    "fit_view",
    "make_example",
    "pad_batch",
    "shuffle_permutation",
    "swap_judgement",
    "swap_sample",
    "train_dataset",
]
