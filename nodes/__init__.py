"""Node kinds: LLM providers and tool kinds, each behind the protocol in `graph.kinds`.

`nodes.registry.build_registry` is the one literal table of kinds; the serve app hands it to the
engine, which never imports this package itself.
"""
