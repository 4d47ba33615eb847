"""Feature encoders as plain callable classes: each loads its model once and maps
a batch (a pyarrow table) to vectors. No Ray here; pipelines.py wraps them."""
