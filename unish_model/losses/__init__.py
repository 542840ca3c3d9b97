"""The objectives of UniSH's three training stages, as functions of tensors (no model object, no Prefect)."""
