"""Integrations with the frameworks that call embedders: LangChain, LlamaIndex, Ray Data.

Each module imports its framework and lives behind its extra (``slimembed[langchain]``,
``slimembed[llamaindex]``, ``slimembed[ray]``); ``import slimembed`` imports none of them.
"""
