"""Fine-tuning of task models: `textserve fine-tune` (sequence and token classification).

Reads labelled data (data.py: csv, jsonl, tsv, SST line format; conll.py: CoNLL and
JSONL with character spans), fine-tunes a whole encoder with a task head through
transformers' Trainer (recipe.py, with the task specifics in sequence.py and tokens.py),
evaluates on the dev split (metrics.py: scikit-learn, seqeval) and writes a Hugging Face
model directory plus `textserve-model.json` atomically (output.py). Orchestrated by
finetune.py. Imports textserve.core and textserve.runtime only, never a service package.
"""
