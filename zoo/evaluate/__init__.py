"""`zoo evaluate`: score a run directory, an export, an .onnx file or a served model on one split of
an image folder with the metrics training uses (zoo.metrics), and write a report.

Modules: targets (what is scored, and how its answers become probabilities), split (which images),
outputs (report.md, confusion.png, reliability.png, evaluation.json) and evaluate (the command).

Nothing is imported here, so that the CLI's start-up reads only the split names (zoo.evaluate.split).
"""
