"""Integrations with the frameworks that call embedders: LangChain, LlamaIndex, Ray Data, and
the local vector stores Qdrant and sqlite-vec.

Each module imports its framework and lives behind its extra (``slimembed[langchain]``,
``slimembed[llamaindex]``, ``slimembed[ray]``, ``slimembed[qdrant]``,
``slimembed[sqlite-vec]``); ``import slimembed`` imports none of them.
"""
