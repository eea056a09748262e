"""The runtime layer: hooks (always removed), stream reducers, the layer runner, the KV-cached
decode step and the forward helpers. Nothing above this layer touches Hugging Face modules
directly. Importing this package imports none of its modules."""
