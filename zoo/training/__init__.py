"""The fine-tuning engine behind `zoo finetune`: strategies, augmentation, the bottleneck-feature
cache, the training loop, metrics and plots. The entry point is `zoo.finetune` (defined in
zoo/training/finetune.py; not re-exported here so that name keeps meaning the module)."""
